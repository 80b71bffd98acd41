#!/bin/bash
# The desk guest's first command (tests/desk/guest.py boots it with virtme-ng): put the Python
# image over the interpreter's and the venv's paths, load uhid and loop, start systemd-udevd with
# the project's rules, and run the tier's tests (their results go to $DESK_OUT/results.json) or the
# bench script named in $DESK_OUT/script.
set -u
echo "guest: up at $(cut -d' ' -f1 /proc/uptime) s"
modprobe -a virtio_scsi sd_mod ext4 uhid loop dm_crypt vhci-hcd 2>&1
disk=""
for _ in $(seq 300); do  # the virtio-scsi disk (vng --disk) shows up a while after the module loads
    disk=$(ls /dev/disk/by-id/*virtme* /dev/sd? /dev/vd? 2>/dev/null | head -1)
    [ -n "$disk" ] && break
    sleep 0.2
done
mkdir -p /run/desk-py
mount -t ext4 -o ro "$disk" /run/desk-py || { echo "guest: cannot mount the Python image ($disk)"; ls -l /dev/disk/by-id /sys/block; dmesg | tail -30; exit 1; }
mount --bind /run/desk-py/base "$DESK_BASE"
mount --bind /run/desk-py/venv "$DESK_VENV"

# udev with the project's rules (and systemd's own: 60-fido-id, 70-uaccess, 99-systemd). virtme-ng's
# init has started systemd-udevd already when it found one: that one reloads its rules. A second
# daemon would run every rule twice and announce every device twice.
cp "$DESK_REPO"/udev/*.rules /etc/udev/rules.d/
if [ -S /run/udev/control ]; then
    udevadm control --reload
else
    /lib/systemd/systemd-udevd --daemon
fi
echo "guest: udev daemons: $(pgrep -c -P 1 systemd-udevd)"
# no "udevadm trigger": the devices the tests use are all made after udevd starts
udevadm settle --timeout=60
echo "guest: udev ready at $(cut -d' ' -f1 /proc/uptime) s"

export DESK_RESULTS="$DESK_OUT/results.json" HOME=/tmp/desk-home TOKENAGENT_DESK_GUEST=1 TOKENAGENT_STRICT_SKIPS="$DESK_STRICT" PYTHONDONTWRITEBYTECODE=1
mkdir -p "$HOME"
cd "$DESK_REPO" || exit 1
read -r -a script < "$DESK_OUT/script"  # a bench script instead of the tests (guest.py's boot)
if [ "${#script[@]}" -gt 0 ]; then
    "$DESK_VENV/bin/python" "${script[@]}"
    echo "guest: ${script[0]} exited $? at $(cut -d' ' -f1 /proc/uptime) s"
    exit 0
fi
mapfile -t ids < "$DESK_OUT/nodeids"
"$DESK_VENV/bin/python" -m pytest -q -p no:cacheprovider -m desk \
    --timeout 900 "${ids[@]}"
echo "guest: pytest exited $? at $(cut -d' ' -f1 /proc/uptime) s"
