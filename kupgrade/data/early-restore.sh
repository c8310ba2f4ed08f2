#!/bin/sh
# kupgrade early-restore runner: runs in the initramfs of the new kernel, before the root
# file system and the network are up. Written into the snapshot by the old kernel's save
# (kupgrade/early.py) together with the hooks (/bin/sh scripts) and their JSON requests; the
# init-bottom script runs it as `busybox sh RUNNER` after moving the snapshot to /run/kupgrade
# (mounted noexec, hence `sh HOOK`). Results stay next to each hook for `kupgrade-restore`.
d=$(dirname "$0")
bb=/bin/busybox
[ -x "$bb" ] || bb=""
now() { read -r up _ < /proc/uptime; echo "$up"; }
for name in $(cat "$d/order"); do
	to=$(cat "$d/$name.timeout")
	tmo=""
	if [ -n "$bb" ] && $bb timeout 1 true 2>/dev/null; then tmo="$bb timeout $to"; fi
	start=$(now)
	$tmo ${bb:+$bb} sh "$d/$name" early-restore < "$d/$name.request.json" > "$d/$name.reply.json" 2> "$d/$name.stderr"
	echo $? > "$d/$name.rc"
	echo "$start $(now)" > "$d/$name.time"
done
exit 0
