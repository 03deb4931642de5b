# soswap's dnf plugin (docs/hooks.md): after each transaction, list the services, sessions, containers and
# processes that still run old code ("soswap hook post-transaction"). It never fails dnf.
# Install in dnf's plugin directory (/usr/lib/python3.*/site-packages/dnf-plugins/soswap.py), with its
# configuration in /etc/dnf/plugins/soswap.conf ("soswap hook setup --manager dnf" writes both).
import os
import shlex
import shutil
import subprocess
import sys

import dnf


class Soswap(dnf.Plugin):
    name = "soswap"

    def __init__(self, base, cli):
        super().__init__(base, cli)
        self.base = base

    def transaction(self):
        """dnf calls this once after a transaction ran."""
        try:
            conf = self.read_config(self.base.conf)
            command = conf.get("main", "command") if conf.has_option("main", "command") else "soswap"
            options = conf.get("main", "options") if conf.has_option("main", "options") else ""
            # one path, whole (it may hold spaces), or shell words
            argv = [command] if os.path.isabs(command) and os.path.isfile(command) else shlex.split(command)
            if not argv:
                return
            if not os.path.isabs(argv[0]):
                path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/local/bin"
                found = shutil.which(argv[0], path=path)
                if found is None:
                    return
                argv[0] = found
            elif not os.access(argv[0], os.X_OK):
                return
            if len(argv) > 1 and subprocess.call([*argv, "--version"], stdin=subprocess.DEVNULL,
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                 timeout=60) != 0:
                return  # PYTHON -I -m soswap with soswap removed: quiet
            sys.stdout.flush()
            subprocess.call([*argv, "hook", "post-transaction", *shlex.split(options)], stdin=subprocess.DEVNULL,
                            timeout=600)
        except Exception as exc:  # a hook never fails the package manager
            sys.stderr.write(f"soswap: dnf plugin: {exc}; skipped\n")
