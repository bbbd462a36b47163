# relay-connector %preun ($1: 0 when the package is erased, 1 or more on an upgrade). On
# erase the running instances are stopped (their binary goes); on an upgrade they keep
# running until %postun restarts them.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl stop 'relay-connector@*.service' || :
fi
