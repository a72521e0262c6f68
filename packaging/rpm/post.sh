# guest-agent %post ($1: 1 on install, 2 on upgrade). Refresh the ld.so cache for the NSS
# module, enable the unit on first install (systemctl enable works without a running systemd)
# and start it when systemd runs.
ldconfig
if [ "$1" -eq 1 ]; then
	systemctl enable guest-agent.service >/dev/null 2>&1 || true
	if [ -d /run/systemd/system ]; then
		systemctl start guest-agent.service >/dev/null 2>&1 || true
	fi
elif [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	systemctl try-restart guest-agent.service >/dev/null 2>&1 || true
fi
