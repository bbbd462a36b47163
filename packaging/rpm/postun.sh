# relay-connector %postun ($1: 0 when the package is erased, 1 or more on an upgrade). On an
# upgrade the instances that are running are restarted with the new binary. Removes nothing
# the operator wrote: NAME.toml, NAME.secret and the `systemctl enable` links stay (an edited
# example.toml is kept as example.toml.rpmsave).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart 'relay-connector@*.service' \
            || echo "relay-connector: restarting the running instances failed; see systemctl status 'relay-connector@*'" >&2
    fi
fi
