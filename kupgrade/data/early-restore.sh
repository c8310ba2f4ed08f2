#!/bin/sh
# kupgrade early-restore runner: runs in the initramfs of the new kernel, before the root file
# system and the network are up, and before kupgrade-restore verifies the snapshot. Written into
# the snapshot by the old kernel's save (kupgrade/hooks/early.py) together with the hooks (/bin/sh
# scripts), their JSON requests and timeouts, and NAME.sha256, the sums of those three files;
# the init-bottom script runs it as `busybox sh RUNNER` after moving the snapshot to
# /run/kupgrade (mounted noexec, hence `sh HOOK`). A hook runs only if its files match their
# sums and under a timeout; otherwise NAME.rc says why it did not run. Results stay next to each
# hook for `kupgrade-restore`. KUPGRADE_BUSYBOX: another busybox (tests).
d=${0%/*}
bb=${KUPGRADE_BUSYBOX:-/bin/busybox}
[ -x "$bb" ] || bb=""
now() { read -r up _ < /proc/uptime; echo "$up"; }
sum=""
if [ -n "$bb" ] && $bb sha256sum /dev/null >/dev/null 2>&1; then sum="$bb sha256sum"
elif command -v sha256sum >/dev/null 2>&1; then sum=sha256sum; fi
tmo=""
if [ -n "$bb" ] && $bb timeout 1 true 2>/dev/null; then tmo="$bb timeout"
elif command -v timeout >/dev/null 2>&1 && timeout 1 sh -c : 2>/dev/null; then tmo=timeout; fi
while read -r name; do
	start=$(now)
	if [ -z "$sum" ]; then
		why="not verified: no sha256sum (busybox applet or command) to check it with: not run"
	elif ! (cd "$d" && $sum -c "$name.sha256") </dev/null >/dev/null 2>&1; then
		why="not verified: its script, request or timeout does not match the sha256 written at save: not run"
	elif [ -z "$tmo" ]; then
		why="no timeout available (busybox timeout applet or timeout command): not run"
	else
		why=""
		read -r to < "$d/$name.timeout"
		$tmo "$to" ${bb:+$bb} sh "$d/$name" early-restore < "$d/$name.request.json" > "$d/$name.reply.json" 2> "$d/$name.stderr"
		echo $? > "$d/$name.rc"
	fi
	[ -n "$why" ] && echo "$why" > "$d/$name.rc"
	echo "$start $(now)" > "$d/$name.time"
done < "$d/order"
exit 0
