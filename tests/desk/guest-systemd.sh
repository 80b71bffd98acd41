#!/bin/bash
# The desk tier's systemd boot: desk-test.service (written by systemd/desk-generator) runs this
# under systemd as PID 1. It makes the read-only 9p root usable (tmpfs on /tmp, /var/tmp and
# /home, a test user in copies of /etc/passwd, /etc/group, /etc/shadow), mounts the shared
# results directory and the Python image, starts systemd-udevd with the project's rules and
# runs the systemd tests (test_desk_systemd.py), which start user@UID.service.
set -u
echo "guest: systemd up, tests start at $(cut -d' ' -f1 /proc/uptime) s"
for kv in $(tr ' ' '\n' < /proc/cmdline | grep -E '^(DESK_[A-Z]+|virtme_initmount0(_fstype)?)='); do
    export "${kv?}"
done
modprobe -a 9p 9pnet_virtio 2>&1
mkdir -p /run/desk-hostroot && mount --bind / /run/desk-hostroot  # the 9p root as it is, below the tmpfs
mount -t tmpfs -o mode=1777 tmpfs /tmp && mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mount -t tmpfs -o mode=755 tmpfs /home
# A checkout (or an interpreter) under one of those (CI clones into /tmp) is bound back from the 9p root.
for top in "$DESK_REPO" "$DESK_BASE" "$DESK_VENV"; do
    case "$top" in
        /tmp/*|/var/tmp/*|/home/*)
            [ -e "$top" ] || { mkdir -p "$top" && mount --bind "/run/desk-hostroot$top" "$top"; } ||
                { echo "guest: cannot bind $top back over the tmpfs"; exit 1; } ;;
    esac
done
mkdir -p "$DESK_OUT"
if [ "${virtme_initmount0_fstype:-9p}" = virtiofs ]; then
    mount -t virtiofs virtme.initmount0 "$DESK_OUT"
else
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576 virtme.initmount0 "$DESK_OUT"
fi || { echo "guest: cannot mount the results directory"; exit 1; }
exec >> "$DESK_OUT/guest.log" 2>&1
echo "guest: results directory mounted at $(cut -d' ' -f1 /proc/uptime) s"
set -x  # the steps below, with their times, in guest.log
PS4='+ $(cut -d" " -f1 /proc/uptime) s: '
modprobe -a virtio_blk virtio_scsi sd_mod ext4 uhid overlay
# The test user must reach the interpreter, the venv and the repository: a parent directory
# the host keeps private (/root) is opened with an overlay whose copy has o+x.
n=0
for top in "$DESK_BASE" "$DESK_VENV" "$DESK_REPO"; do
    d="$top"
    while [ "$d" != / ]; do
        d=$(dirname "$d")
        if [ "$d" != / ] && [ $(( 0$(stat -c %a "$d") & 1 )) = 0 ] && ! grep -q " $d overlay " /proc/mounts; then
            n=$((n + 1)); mkdir -p /run/desk-ov/$n/u /run/desk-ov/$n/w
            timeout 60 mount -t overlay overlay -o "lowerdir=$d,upperdir=/run/desk-ov/$n/u,workdir=/run/desk-ov/$n/w" "$d" && chmod o+x "$d"
        fi
    done
done
disk=""
for _ in $(seq 100); do
    disk=$(ls /dev/disk/by-id/*virtme* /dev/sd? /dev/vd? 2>/dev/null | head -1)
    [ -n "$disk" ] && break
    sleep 0.2
done
mkdir -p /run/desk-py
timeout 60 mount -t ext4 -o ro "$disk" /run/desk-py || {
    echo "guest: cannot mount the Python image ($disk)"; lsmod; ls -l /sys/block /sys/bus/virtio/devices; dmesg | tail -40; exit 1; }
mount --bind /run/desk-py/base "$DESK_BASE"
mount --bind /run/desk-py/venv "$DESK_VENV"
# the test user: a real account in copies of the account files
mkdir -p /run/desk-etc
for f in passwd group shadow; do cp /etc/$f /run/desk-etc/$f; done
echo "desk:x:4242:4242:desk tier user:/home/desk:/bin/bash" >> /run/desk-etc/passwd
echo "desk:x:4242:" >> /run/desk-etc/group
echo "desk:!:19000:0:99999:7:::" >> /run/desk-etc/shadow
for f in passwd group shadow; do mount --bind /run/desk-etc/$f /etc/$f; done
install -d -m 700 -o 4242 -g 4242 /home/desk
# udev with the project's rules, then the tests
mkdir -p /run/udev/rules.d && cp "$DESK_REPO"/udev/*.rules /run/udev/rules.d/
systemctl start systemd-udevd.service
udevadm settle --timeout=60
set +x
echo "guest: udev ready at $(cut -d' ' -f1 /proc/uptime) s"
export DESK_RESULTS="$DESK_OUT/results.json" HOME=/root TOKENAGENT_DESK_GUEST=1 TOKENAGENT_DESK_SYSTEMD=1 \
    TOKENAGENT_STRICT_SKIPS="$DESK_STRICT" PYTHONDONTWRITEBYTECODE=1 PATH=/usr/sbin:/usr/bin:/sbin:/bin
cd "$DESK_REPO" || exit 1
mapfile -t ids < "$DESK_OUT/nodeids"
timeout 900 "$DESK_VENV/bin/python" -m pytest -q -p no:cacheprovider -m desk --timeout 600 "${ids[@]}"
echo "guest: pytest exited $? at $(cut -d' ' -f1 /proc/uptime) s"
journalctl --no-pager -q -o short-monotonic 2>/dev/null | tail -80
