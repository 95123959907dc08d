# pkgstream dnf 4 plugin (RHEL 8/9/10 dnf, not dnf5).
#
# One event per package change, carrying dnf's context:
#   pre_transaction  puts dnf's context (command line, user, start time, the
#                    repo of every package to install, which package
#                    obsoletes which (rpm does not link them under dnf), and -- as soon as dnf
#                    opened its history record -- the history id) into the
#                    environment variable PKGSTREAM_DNF_CONTEXT;
#   (rpm runs)       the rpm plugin pkgstream.so, in this same process, reads
#                    it and records every committed change with source DNF
#                    and that context, then sets PKGSTREAM_RPM_RECORDED;
#   transaction      if the rpm plugin did not run (not installed, or rpm
#                    plugins disabled), records the changes itself from
#                    dnf's view, with the rpm transaction id read back from
#                    the rpmdb (INSTALLTID), so event ids still match.
# It never fails or stalls dnf: every hook catches everything, logs it, and
# pkgstream-emit runs with a timeout. See producer/README.md.

from __future__ import absolute_import, unicode_literals

import ctypes
import json
import logging
import os
import pwd
import subprocess
import time

import dnf

logger = logging.getLogger("dnf.plugin")

CONTEXT_ENV = "PKGSTREAM_DNF_CONTEXT"
RECORDED_ENV = "PKGSTREAM_RPM_RECORDED"
DEFAULT_EMIT = "/usr/bin/pkgstream-emit"
DEFAULT_TIMEOUT_MS = 5000
UNSET_LOGINUID = 4294967295

# dnf's transaction item actions, by our name for them.
FORWARD = {"install": "install", "upgrade": "upgrade", "downgrade": "downgrade", "reinstall": "reinstall", "obsolete": "install"}
BACKWARD = {"upgraded": "upgrade", "downgraded": "downgrade", "reinstalled": "reinstall", "obsoleted": "obsolete", "remove": "remove"}


def nevra_key(p):
    """name-epoch:version-release.arch, epoch 0 when unset (the rpm plugin's key)."""
    return "%s-%d:%s-%s.%s" % (p["name"], int(p.get("epoch") or 0), p["version"], p["release"], p["arch"])


def login_user(loginuid_text, environ, uid_name):
    """The human behind the change: the login uid's name; when unset, SUDO_USER;
    else the current uid's name. uid_name(uid) returns a name or None."""
    try:
        uid = int((loginuid_text or "").strip())
    except ValueError:
        uid = UNSET_LOGINUID
    if uid != UNSET_LOGINUID and uid >= 0:
        return uid_name(uid) or str(uid)
    sudo = environ.get("SUDO_USER")
    if sudo:
        return sudo
    uid = os.getuid()
    return uid_name(uid) or str(uid)


def changes_from_items(items):
    """dnf's transaction items -> pkgstream changes.

    items: list of (action, pkg) with action one of install, upgrade,
    upgraded, downgrade, downgraded, reinstall, reinstalled, remove,
    obsolete, obsoleted and pkg a dict (name, epoch, version, release,
    arch, repo, and for an obsoleted package replaced_by: the nevra_key of
    the package that obsoletes it, when dnf knows). Returns a list of (action, package, replaced) with the
    hook input's action names; the old side of an upgrade/downgrade/
    reinstall is paired by name with the new side; an obsoleted package is
    paired with the obsoleting one (the only one, or the first)."""
    out = []
    old_by_name = {}
    for action, pkg in items:
        if action in ("upgraded", "downgraded", "reinstalled"):
            old_by_name.setdefault(pkg["name"], pkg)
    obsoleting = [pkg for action, pkg in items if action == "obsolete"]
    forward = dict((nevra_key(pkg), pkg) for action, pkg in items if action in FORWARD)
    for action, pkg in items:
        if action in ("upgrade", "downgrade", "reinstall"):
            out.append((action, pkg, old_by_name.get(pkg["name"])))
        elif action in ("install", "obsolete"):
            old = old_by_name.get(pkg["name"])
            out.append(("upgrade", pkg, old) if old is not None else ("install", pkg, None))
        elif action == "remove":
            out.append(("remove", pkg, None))
        elif action == "obsoleted":
            by = forward.get(pkg.get("replaced_by") or "")
            out.append(("obsolete", pkg, by if by is not None else (obsoleting[0] if obsoleting else None)))
        # upgraded/downgraded/reinstalled: reported with their new side.
    return out


def package_json(pkg, with_repo):
    out = {"name": pkg["name"], "version": pkg["version"], "release": pkg["release"], "arch": pkg["arch"]}
    if pkg.get("epoch"):
        out["epoch"] = int(pkg["epoch"])
    if with_repo and pkg.get("repo") and not pkg["repo"].startswith("@"):
        out["repo"] = pkg["repo"]
    return out


def rfc3339(t):
    """Unix seconds (a float) as RFC 3339 UTC with microseconds: two
    transactions within one second keep their order downstream."""
    micros = int(round(t * 1000000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(micros // 1000000)) + ".%06dZ" % (micros % 1000000)


def ndjson(changes, source, transaction, event_time):
    """The NDJSON hook input for `pkgstream-emit record`."""
    lines = []
    for action, pkg, replaced in changes:
        line = {"kind": "change", "source": source, "action": action, "event_time": rfc3339(event_time),
                "package": package_json(pkg, action not in ("remove", "obsolete")), "transaction": transaction}
        if replaced is not None:
            line["replaced"] = package_json(replaced, False)
        lines.append(json.dumps(line, sort_keys=True))
    return "".join(l + "\n" for l in lines)


# Exit statuses of `pkgstream-emit record` that still spooled the events: 65
# (some lines refused, set aside in SPOOL/dead/), 79 (broken configuration,
# spooled with the fallback).
RECORDED_WITH_WARNING = (65, 79)


def run_emitter(exe, data, timeout_s, log=logger):
    """Runs `exe record --spawn-flush` with data on stdin, killed after
    timeout_s. Returns True on success; logs why not otherwise. Never raises."""
    try:
        proc = subprocess.Popen([exe, "record", "--spawn-flush"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL if hasattr(subprocess, "DEVNULL") else open(os.devnull, "wb"),
                                stderr=subprocess.PIPE, close_fds=True)
    except (OSError, ValueError) as e:
        log.warning("pkgstream: cannot run %s: %s; changes of this transaction not recorded", exe, e)
        return False
    try:
        _, err = proc.communicate(data.encode("utf-8"), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        log.warning("pkgstream: %s record did not finish within %d ms and was killed", exe, int(timeout_s * 1000))
        return False
    except Exception as e:  # noqa: BLE001 -- never fail dnf
        log.warning("pkgstream: %s record: %s", exe, e)
        return False
    why = (err or b"").decode("utf-8", "replace").strip().replace("\n", " | ")
    if proc.returncode in RECORDED_WITH_WARNING:
        log.warning("pkgstream: changes of this transaction recorded, with a warning from %s (exit %s): %s",
                    exe, proc.returncode, why)
        return True
    if proc.returncode != 0:
        log.warning("pkgstream: %s record failed (exit %s): %s", exe, proc.returncode, why)
        return False
    return True


def _uid_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _c_getenv(name):
    """Reads the process environment as C sees it (the rpm plugin sets it with
    setenv(3); os.environ is a copy taken at start-up)."""
    try:
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_char_p
        value = libc.getenv(name.encode())
        return value.decode() if value else None
    except Exception:  # noqa: BLE001
        return None


def _replaced_by_key(tsi):
    """nevra_key of the package that replaces tsi (libdnf's replaced-by link)."""
    try:
        for other in tsi._item.getReplacedBy():
            it = other.getRPMItem()
            return nevra_key({"name": it.getName(), "epoch": it.getEpoch(), "version": it.getVersion(),
                              "release": it.getRelease(), "arch": it.getArch()})
    except Exception:  # noqa: BLE001 -- older/newer libdnf: fall back to pairing
        return None
    return None


ACTION_NAMES = {}
for _name in ("install", "upgrade", "upgraded", "downgrade", "downgraded", "reinstall", "reinstalled", "remove", "obsolete", "obsoleted"):
    _const = getattr(dnf.transaction, "PKG_" + _name.upper(), None)
    if _const is not None:
        ACTION_NAMES[_const] = _name


class Pkgstream(dnf.Plugin):
    """Reports every package change dnf makes to pkgstream."""

    name = "pkgstream"

    def __init__(self, base, cli):
        super(Pkgstream, self).__init__(base, cli)
        self.base = base
        self.emit = os.environ.get("PKGSTREAM_EMIT") or DEFAULT_EMIT
        self.timeout_s = DEFAULT_TIMEOUT_MS / 1000.0
        self.context = None
        try:
            conf = self.read_config(base.conf)
            if conf.has_option("main", "emitter") and not os.environ.get("PKGSTREAM_EMIT"):
                self.emit = conf.get("main", "emitter")
            if conf.has_option("main", "timeout_ms"):
                self.timeout_s = conf.getint("main", "timeout_ms") / 1000.0
        except Exception as e:  # noqa: BLE001
            logger.warning("pkgstream: config: %s; using defaults", e)
        if os.environ.get("PKGSTREAM_HOOK_TIMEOUT_MS"):
            try:
                self.timeout_s = int(os.environ["PKGSTREAM_HOOK_TIMEOUT_MS"]) / 1000.0
            except ValueError:
                pass

    def _items(self):
        items = []
        for tsi in self.base.transaction:
            action = ACTION_NAMES.get(tsi.action)
            if action is None:
                continue
            p = tsi.pkg
            pkg = {"name": p.name, "epoch": p.epoch, "version": p.version, "release": p.release,
                   "arch": p.arch, "repo": getattr(p, "reponame", None)}
            if action == "obsoleted":
                pkg["replaced_by"] = _replaced_by_key(tsi)
            items.append((action, pkg))
        return items

    def _publish(self):
        os.environ[CONTEXT_ENV] = json.dumps(self.context, sort_keys=True)

    def pre_transaction(self):
        try:
            try:
                os.unsetenv(RECORDED_ENV)
            except Exception:  # noqa: BLE001
                pass
            repos = {}
            obsoleted = {}
            for action, pkg in self._items():
                if action in FORWARD and pkg.get("repo") and not pkg["repo"].startswith("@"):
                    repos[nevra_key(pkg)] = pkg["repo"]
                if action == "obsoleted" and pkg.get("replaced_by"):
                    obsoleted[nevra_key(pkg)] = pkg["replaced_by"]
            try:
                with open("/proc/self/loginuid") as f:
                    loginuid = f.read()
            except (IOError, OSError):
                loginuid = ""
            args = getattr(self.base, "args", None) or []
            self.context = {"pid": os.getpid(), "source": "dnf", "start_time": int(time.time()),
                            "login_user": login_user(loginuid, os.environ, _uid_name), "repos": repos,
                            "obsoleted": obsoleted}
            if args:
                self.context["command_line"] = "dnf " + " ".join(args)
            self._publish()
            self._hook_history()
        except Exception as e:  # noqa: BLE001 -- never fail dnf
            logger.warning("pkgstream: pre_transaction: %s", e)

    def _hook_history(self):
        """Learns dnf's history id the moment dnf opens the record, before rpm runs."""
        history = self.base.history
        original = history.beg
        plugin = self

        def beg(*args, **kwargs):
            tid = original(*args, **kwargs)
            try:
                if tid is not None:
                    plugin.context["history_id"] = int(tid)
                cmdline = args[3] if len(args) > 3 else kwargs.get("cmdline")
                if cmdline:
                    plugin.context["command_line"] = "dnf " + cmdline
                plugin._publish()
            except Exception as e:  # noqa: BLE001
                logger.warning("pkgstream: history: %s", e)
            return tid

        history.beg = beg

    def transaction(self):
        try:
            self._transaction()
        except Exception as e:  # noqa: BLE001 -- never fail dnf
            logger.warning("pkgstream: transaction: %s", e)
        finally:
            os.environ.pop(CONTEXT_ENV, None)

    def _transaction(self):
        recorded = _c_getenv(RECORDED_ENV)
        fields = (recorded or "").split(" ", 4)
        if fields[0] == str(os.getpid()):
            if len(fields) > 3 and fields[3] == "failed":
                logger.warning("pkgstream: %s change(s) of rpm transaction %s not recorded: %s", fields[2], fields[1],
                               fields[4] if len(fields) > 4 else "unknown reason")
            elif len(fields) > 3 and fields[3] == "warning":
                logger.warning("pkgstream: %s change(s) of rpm transaction %s recorded, with a warning: %s", fields[2],
                               fields[1], fields[4] if len(fields) > 4 else "")
            else:
                logger.debug("pkgstream: the rpm plugin recorded this transaction (%s)", recorded)
            return
        changes = changes_from_items(self._items())
        if not changes:
            return
        ctx = self.context or {}
        last = self.base.history.last()
        txn = {"rpm_tid": self._rpm_tid(changes, last)}
        if last is not None:
            txn["history_id"] = int(last.tid)
            if getattr(last, "cmdline", None):
                txn["command_line"] = "dnf " + last.cmdline
        for k in ("command_line", "login_user", "start_time"):
            if ctx.get(k) and k not in txn:
                txn[k] = ctx[k]
        data = ndjson(changes, "dnf", txn, time.time())
        logger.debug("pkgstream: rpm plugin not active; recording %d change(s) from dnf", len(changes))
        run_emitter(self.emit, data, self.timeout_s)

    def _rpm_tid(self, changes, last):
        """rpm's transaction id: INSTALLTID of a package this transaction installed."""
        try:
            import rpm
            ts = rpm.TransactionSet(self.base.conf.installroot)
            for action, pkg, _ in changes:
                if action in ("remove", "obsolete"):
                    continue
                for hdr in ts.dbMatch("name", pkg["name"]):
                    if hdr["version"] == pkg["version"] and hdr["release"] == pkg["release"] and hdr["arch"] == pkg["arch"]:
                        return int(hdr["installtid"])
        except Exception as e:  # noqa: BLE001
            logger.debug("pkgstream: rpmdb: %s", e)
        if last is not None and getattr(last, "beg_timestamp", None):
            return int(last.beg_timestamp)
        return int(time.time())
