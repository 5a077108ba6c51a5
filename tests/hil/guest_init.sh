#!/bin/sh
# The HIL guest after the early init (hil_image.py): /repo is the repository,
# /site the host venv's site-packages, /hil this run's folder (plan in, results out).
# Starts udev, loads the USB modules, runs the scenario, powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
# The station's packages: compiled by the host into the run folder when it put them
# there (test_hil.py), else straight from the repository.
if [ -d /hil/code/station ]; then code=/hil/code; else code=/repo; fi
export PYTHONPATH=$code:/site
export PYTHONDONTWRITEBYTECODE=1
export PYTHONUNBUFFERED=1
export LANG=C.UTF-8
# The power-cut tier (test_powercut.py) runs its own guest program, as PID 1, without
# udev or USB: it imports the station from a code disk, not from the shared folders.
if [ -f /hil/powercut.json ]; then
  PYTHONPATH='' exec python3 /repo/tests/hil/powercut.py /hil
fi

t0=$(cut -d" " -f1 /proc/uptime); date +%s.%N >/hil/t_init
echo "HIL: guest up at ${t0} s"
mount -t configfs none /sys/kernel/config 2>/dev/null || {
  modprobe configfs && mount -t configfs none /sys/kernel/config
}
mkdir -p /run/hil
# The scenario starts the daemon at once (its imports take most of a minute under
# emulation) and waits for /run/hil/udev-ready before it makes gadgets.
python3 /repo/tests/hil/scenario.py /hil &
scenario=$!
/lib/systemd/systemd-udevd --daemon --resolve-names=never
# No coldplug trigger: every device the tests look at (USB, the card disks) is
# added after udevd runs; triggering the whole machine costs 10 s under TCG.
ports=$(python3 -c 'import json; print(json.load(open("/hil/plan.json")).get("ports", 4))')
modprobe dummy_hcd num="$ports"
modprobe -a libcomposite usb_f_fs usb_f_mass_storage xhci_pci usb_storage sd_mod vfat exfat \
  nls_ascii nls_utf8 nls_cp437 nls_cp936 nls_iso8859-1 loop || echo "HIL: modprobe failed"
udevadm settle --timeout=30
touch /run/hil/udev-ready
echo "HIL: udev ready at $(cut -d' ' -f1 /proc/uptime) s"
wait $scenario
echo "HIL: scenario exit $? at $(cut -d' ' -f1 /proc/uptime) s"
sync
echo o >/proc/sysrq-trigger
sleep 30
