# explore-sandbox: guest-side helpers (bash). A unit per systemd sandbox option, dumped as kupgrade
# dumps (criu.dump_argv's options) and restored detached (trial) or by the unit's start through a
# drop-in shaped like kupgrade's (trial2; PREFIX "+" = full privileges).
set -u
IMG=/run/kupgrade-snapshot/images
PROG='import time,sys
n=0
try:
    f=open("/tmp/sb-counter","a")
except OSError:
    f=open("/dev/null","a")
while True:
    n+=1; f.write(f"{n}\n"); f.flush(); print(n, flush=True); time.sleep(0.5)'

upto() {  # upto SECONDS CMD...: poll CMD every 0.1 s until it succeeds (no fixed sleeps)
  local n=$(( $1 * 10 )); shift
  while ! "$@" >/dev/null 2>&1; do n=$((n-1)); [ $n -le 0 ] && return 1; sleep 0.1; done
}
counting() { journalctl -u "$1" -o cat --no-pager | grep -q '^[0-9]'; }      # the unit's loop printed
moved() { [ "$(tail -1 "$1")" != "$2" ]; }                                     # a restored loop went on
journal_moved() { [ "$(journalctl -u "$1" -n 1 -o cat --no-pager)" != "$2" ]; }

mkunit() {  # mkunit NAME "Prop=val\nProp=val"
  local u=$1 props=$2
  cat > /usr/local/bin/sb-loop <<PY
#!/usr/bin/python3
$PROG
PY
  chmod 755 /usr/local/bin/sb-loop
  printf '[Unit]\nDescription=sandbox test %s\n[Service]\nExecStart=/usr/local/bin/sb-loop\n%b\n' "$u" "$props" > /etc/systemd/system/$u.service
  systemctl daemon-reload
}

snapmount() {  # kupgrade's tmpfs, as stages/snapshot.py mounts it
  mountpoint -q /run/kupgrade-snapshot && return 0
  mkdir -p -m 0700 /run/kupgrade-snapshot
  mount -t tmpfs -o mode=0700,size=256M,nosuid,nodev,noexec kupgrade-snapshot /run/kupgrade-snapshot
}

socks() {  # stdio sockets of PID -> "--external unix[INO]" words
  local pid=$1 fd l
  for fd in 0 1 2; do l=$(readlink /proc/$pid/fd/$fd 2>/dev/null) || continue
    case $l in socket:*) i=${l#socket:[}; echo "unix[${i%]}]";; esac; done | sort -u
}

dump() {  # dump UNIT EXTRA... ; prints first error or OK
  local u=$1; shift
  local pid cg d ext
  pid=$(systemctl show -p MainPID --value $u); cg=$(systemctl show -p ControlGroup --value $u)
  d=$IMG/$u; rm -rf $d; mkdir -p $d
  ext=(); for s in $(socks $pid); do ext+=(--external "$s"); done
  echo "$pid" > $d/pid
  (cd $d && timeout 120 criu dump --tree $pid --images-dir $d --log-file dump.log -v4 --leave-stopped --file-locks \
     --tcp-established --skip-in-flight --network-lock nftables --freeze-cgroup /sys/fs/cgroup$cg "${ext[@]}" "$@")
  local rc=$?
  echo "DUMP $u rc=$rc extra=[$*] $(grep -m1 Error $d/dump.log)"
  return $rc
}

resume() {  # after --leave-stopped dump: continue the tasks
  local u=$1 pid=$(cat $IMG/$u/pid); kill -CONT $pid; for c in $(pgrep -P $pid); do kill -CONT $c; done
}

killwait() { local pid=$1 i=0; kill -9 $pid 2>/dev/null; while kill -0 $pid 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; kill -0 $pid 2>/dev/null && echo "STILL THERE $pid $(grep State /proc/$pid/status)"; }

restore_detached() {  # restore UNIT EXTRA... (from a root shell, same kernel)
  local u=$1; shift; local d=$IMG/$u pid=$(cat $IMG/$u/pid)
  local inh=() ; exec 7>>/tmp/restored-$u.out
  for ino in $(cat $d/socks 2>/dev/null); do inh+=(--inherit-fd "fd[7]:socket:[$ino]"); done
  (cd $d && timeout 120 criu restore --images-dir $d --log-file restore.log -v4 --restore-detached --pidfile $d/restored.pid --file-locks "${inh[@]}" "$@")
  local rc=$?
  echo "RESTORE $u rc=$rc extra=[$*] $(grep -m1 Error $d/restore.log) pid=$(cat $d/restored.pid 2>/dev/null) want=$pid"
  return $rc
}


PROPS=PrivateUsers,PrivateTmp,ProtectSystem,ProtectHome,ProtectHostname,PrivateDevices,DynamicUser,NoNewPrivileges,RestrictNamespaces,MemoryDenyWriteExecute,SystemCallFilter,SystemCallArchitectures,User,PrivateNetwork,PrivateIPC,PrivateMounts,ProtectKernelTunables,ProtectKernelModules,ProtectControlGroups,ProtectKernelLogs,ProtectClock,ProtectProc,MountFlags,RootDirectory,ReadOnlyPaths,InaccessiblePaths,LockPersonality,RestrictRealtime,RestrictSUIDSGID,CapabilityBoundingSet,TemporaryFileSystem,BindPaths

cleanup() {  # cleanup UNIT PID
  local u=$1 pid=$2
  [ "$pid" -gt 1 ] && kill -9 $pid 2>/dev/null; systemctl stop $u 2>/dev/null; systemctl reset-failed $u 2>/dev/null
  rm -rf /run/systemd/system/$u.service.d; systemctl daemon-reload
}

nsdiff() {  # namespaces of PID that differ from PID 1's
  local pid=$1 n out=""
  for n in cgroup ipc mnt net pid time user uts; do
    [ "$(readlink /proc/$pid/ns/$n)" != "$(readlink /proc/1/ns/$n)" ] && out="$out $n"; done
  echo "ns:${out:- none}"
}

started() {  # started UNIT "PROPS": a fresh unit running its loop, kupgrade's tmpfs, its stdio sockets noted; echoes the PID
  local u=$1 props=$2 pid
  cleanup $u 0 >&2
  mkunit $u "$props" >&2; timeout 60 systemctl start $u >&2; upto 10 counting $u
  pid=$(systemctl show -p MainPID --value $u)
  snapmount >&2
  socks $pid | sed 's/unix\[\(.*\)\]/\1/' > /tmp/socks-$u
  echo $pid
}

trial() {  # trial UNIT "PROPS" "DUMP EXTRA" "RESTORE EXTRA"
  local u=$1 props=$2 dx=$3 rx=$4 pid
  echo "=== $u [$props] dump+[$dx] restore+[$rx]"
  pid=$(started $u "$props")
  echo "pid=$pid $(nsdiff $pid) $(grep -E '^(NoNewPrivs|Seccomp):' /proc/$pid/status | tr -s '\t\n' '  ') uid=$(stat -c %u /proc/$pid)"
  if ! dump $u $dx; then cleanup $u $pid; return 1; fi
  cp /tmp/socks-$u $IMG/$u/socks
  killwait $pid
  if ! restore_detached $u $rx; then cleanup $u $pid; return 2; fi
  local before=$(tail -1 /tmp/restored-$u.out); upto 10 moved /tmp/restored-$u.out "$before"; local after=$(tail -1 /tmp/restored-$u.out)
  echo "RUNS counter $before -> $after; $(nsdiff $pid) $(grep -E '^(NoNewPrivs|Seccomp):' /proc/$pid/status | tr -s '\t\n' '  ') uid=$(stat -c %u /proc/$pid)"
  cleanup $u $pid
}

unit_restore() {  # unit_restore UNIT PREFIX "RESTORE EXTRA": the unit's start restores it (like kupgrade's drop-in)
  local u=$1 pfx=$2 rx=$3 d=$IMG/$1 pid=$(cat $IMG/$1/pid)
  cat > /usr/local/bin/sb-restore <<SH
#!/bin/bash
u=\$1; d=$IMG/\$u; shift
inh=(); for ino in \$(cat \$d/socks); do inh+=(--inherit-fd "fd[1]:socket:[\$ino]"); done
id > /run/sb-restore-\$u.id 2>&1; grep -E 'NoNewPrivs|Seccomp|CapEff' /proc/self/status >> /run/sb-restore-\$u.id
exec ${WRAP:-} criu restore --images-dir \$d --log-file restore-unit.log -v4 --restore-detached --pidfile /run/sb-\$u.pid --file-locks "\${inh[@]}" "\$@"
SH
  chmod 755 /usr/local/bin/sb-restore
  mkdir -p /run/systemd/system/$u.service.d
  printf '[Service]\nType=forking\nPIDFile=/run/sb-%s.pid\nGuessMainPID=no\nExecStartPre=\nExecStart=\nExecStart=%s/usr/local/bin/sb-restore %s %s\nRestart=no\nTimeoutStartSec=120\n' \
    "$u" "$pfx" "$u" "$rx" > /run/systemd/system/$u.service.d/zz.conf
  systemctl daemon-reload; systemctl reset-failed $u 2>/dev/null
  rm -f /run/sb-$u.pid
  timeout 150 systemctl start $u; local rc=$?
  local main=$(systemctl show -p MainPID --value $u) st=$(systemctl show -p ActiveState --value $u)
  echo "UNIT-RESTORE $u prefix='$pfx' rc=$rc MainPID=$main (want $pid) $st; $(grep -m1 Error $d/restore-unit.log 2>/dev/null || echo 'no log'); as: $(tr '\n' ' ' < /run/sb-restore-$u.id 2>/dev/null)"
  [ "$main" = "$pid" ] && { upto 10 journal_moved $u "$(journalctl -u $u -n 1 -o cat --no-pager)"; echo "   $(nsdiff $pid) $(grep -E '^(NoNewPrivs|Seccomp):' /proc/$pid/status | tr -s '\t\n' '  ') uid=$(stat -c %u /proc/$pid) journal: $(journalctl -u $u -n 1 -o cat --no-pager)"; }
  [ "$rc" = 0 ]
}

trial2() {  # trial2 UNIT "PROPS" "DUMP EXTRA" "RESTORE EXTRA" PREFIX: dump, then restore by the unit's start
  local u=$1 props=$2 dx=$3 rx=$4 pfx=$5 pid
  echo "=== $u [$props] dump+[$dx] unit-restore prefix='$pfx' +[$rx]"
  pid=$(started $u "$props")
  if ! dump $u $dx; then cleanup $u $pid; return 1; fi
  cp /tmp/socks-$u $IMG/$u/socks
  killwait $pid
  systemctl reset-failed $u 2>/dev/null
  unit_restore $u "$pfx" "$rx"
  cleanup $u $pid
}

extmnts() {  # extmnts PID: "--external mnt[MP]:cN" for every mount but / ; writes restore map to /tmp/extmap-PID
  local pid=$1 i=0; : > /tmp/extmap-$pid
  while read -r id par dev root mp rest; do
    [ "$mp" = / ] && continue
    i=$((i+1)); echo "--external mnt[$mp]:c$i"
    # host path of this mount's root: the same fs seen from PID 1 (root of fs + mountpoint in init ns)
    local hp; hp=$(awk -v d="$dev" '$3==d && $4=="/" {print $5; exit}' /proc/1/mountinfo)
    if [ -n "$hp" ]; then [ "$root" = / ] && echo "--external mnt[c$i]:$hp" >> /tmp/extmap-$pid || echo "--external mnt[c$i]:${hp%/}$root" >> /tmp/extmap-$pid
    else echo "--external mnt[c$i]:/NOTFOUND$mp" >> /tmp/extmap-$pid; fi
  done < /proc/$pid/mountinfo
}

trial_ext() {  # trial_ext UNIT PROPS: every mount external
  local u=$1 props=$2 pid
  echo "=== $u [$props] every mount --external, restore with the host paths"
  pid=$(started $u "$props")
  local dx; dx=$(extmnts $pid | tr '\n' ' ')
  echo "externals: $(echo $dx | wc -w) words; map: $(grep -c . /tmp/extmap-$pid) lines; $(grep NOTFOUND /tmp/extmap-$pid | head -3)"
  if ! dump $u $dx; then grep -B3 Error $IMG/$u/dump.log | head -12; cleanup $u $pid; return 1; fi
  cp /tmp/socks-$u $IMG/$u/socks
  killwait $pid
  if ! restore_detached $u $(cat /tmp/extmap-$pid) --root /; then grep -B3 Error $IMG/$u/restore.log | head -12; cleanup $u $pid; return 2; fi
  local before=$(tail -1 /tmp/restored-$u.out); upto 10 moved /tmp/restored-$u.out "$before"; local after=$(tail -1 /tmp/restored-$u.out)
  echo "RUNS counter $before -> $after; $(nsdiff $pid); /tmp there: $(ls /proc/$pid/root/tmp | head -3 | tr '\n' ' ')"
  grep -c . /proc/$pid/mountinfo
  cleanup $u $pid
}
