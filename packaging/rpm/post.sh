# relay-connector %post ($1: 1 on a first install, 2 or more on an upgrade). A first install
# enables and starts nothing: instances are the operator's (relay-connector-setup NAME;
# systemctl enable --now relay-connector@NAME). In a chroot (rpm --root), systemctl itself
# ignores these requests.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
