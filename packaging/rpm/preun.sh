# guest-agent %preun ($1: 0 on erase, 1 on upgrade): stop and disable the unit on erase. The
# edits the daemon made are taken back in %postun (packaging/scripts/postrm).
if [ "$1" -eq 0 ]; then
	systemctl --no-reload disable --now guest-agent.service >/dev/null 2>&1 || true
fi
