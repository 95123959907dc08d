# pkgstream yum 3 plugin (RHEL 7; python 2.7, also imports under python 3).
#
# posttrans_hook runs after yum's rpm transaction: every member of the
# transaction that rpm committed becomes one change event (source YUM),
# handed to `pkgstream-emit record` with a timeout. The rpm transaction id is
# read back from the rpmdb (INSTALLTID), so the event id is the one any
# other hook would derive. RHEL 7's rpm (4.11) predates the plugin ABI of
# pkgstream.so: plain `rpm -U` there is seen only by the inventory snapshot.
# The hook never fails or stalls yum: everything is caught and logged.

import json
import os
import pwd
import subprocess
import time

from yum.plugins import TYPE_CORE

requires_api_version = "2.3"
plugin_type = (TYPE_CORE,)

DEFAULT_EMIT = "/usr/bin/pkgstream-emit"
UNSET_LOGINUID = 4294967295

# yum.constants output states (numeric so the plugin imports without yum.constants).
TS_UPDATE = 10
TS_INSTALL = 20
TS_TRUEINSTALL = 30
TS_ERASE = 40
TS_OBSOLETED = 50
TS_OBSOLETING = 60
TS_UPDATED = 90
TS_FAILED = 100


def pkg_dict(po):
    out = {"name": po.name, "version": po.version, "release": po.release, "arch": po.arch}
    try:
        if po.epoch not in (None, "", "0", 0):
            out["epoch"] = int(po.epoch)
    except (TypeError, ValueError):
        pass
    return out


def _evr(po):
    return (int(po.epoch or 0), po.version, po.release)


def changes_from_members(members, compare_evr):
    """yum transaction members -> [(action, po, replaced_po)].

    compare_evr(a, b) is rpm's EVR comparison (rpm.labelCompare) on
    (epoch, version, release) tuples."""
    out = []
    for m in members:
        state = m.output_state
        if state == TS_FAILED:
            continue
        if state in (TS_INSTALL, TS_TRUEINSTALL, TS_UPDATE, TS_OBSOLETING):
            old = None
            for attr in ("updates", "downgrades"):
                for o in getattr(m, attr, None) or []:
                    if o.name == m.po.name:
                        old = o
                        break
                if old is not None:
                    break
            if getattr(m, "reinstall", False):
                out.append(("reinstall", m.po, old or m.po))
            elif old is None:
                out.append(("install", m.po, None))
            else:
                c = compare_evr(_evr(m.po), _evr(old))
                out.append(("upgrade" if c > 0 else "downgrade" if c < 0 else "reinstall", m.po, old))
        elif state == TS_OBSOLETED:
            by = (getattr(m, "obsoleted_by", None) or [None])[0]
            out.append(("obsolete", m.po, by))
        elif state == TS_ERASE:
            # The old side of an update/downgrade/reinstall has TS_UPDATED
            # (or is listed in updated_by/downgraded_by): reported with the new side.
            if getattr(m, "updated_by", None) or getattr(m, "downgraded_by", None) or getattr(m, "reinstall", False):
                continue
            out.append(("remove", m.po, None))
        # TS_UPDATED: the old side, reported with the new side.
    return out


def rfc3339(t):
    """Unix seconds (a float) as RFC 3339 UTC with microseconds: two
    transactions within one second keep their order downstream."""
    micros = int(round(t * 1000000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(micros // 1000000)) + ".%06dZ" % (micros % 1000000)


def ndjson(changes, transaction, event_time):
    lines = []
    for action, po, replaced in changes:
        pkg = pkg_dict(po)
        repo = getattr(po, "repoid", None)
        if action not in ("remove", "obsolete") and repo and not repo.startswith("@") and repo != "installed":
            pkg["repo"] = repo
        line = {"kind": "change", "source": "yum", "action": action, "event_time": rfc3339(event_time),
                "package": pkg, "transaction": transaction}
        if replaced is not None:
            line["replaced"] = pkg_dict(replaced)
        lines.append(json.dumps(line, sort_keys=True))
    return "".join(l + "\n" for l in lines)


def login_user(loginuid, environ, uid_name, getuid=os.getuid):
    try:
        uid = int(loginuid)
    except (TypeError, ValueError):
        uid = UNSET_LOGINUID
    if 0 <= uid != UNSET_LOGINUID:
        return uid_name(uid) or str(uid)
    if environ.get("SUDO_USER"):
        return environ["SUDO_USER"]
    uid = getuid()
    return uid_name(uid) or str(uid)


def _uid_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


# Exit statuses of `pkgstream-emit record` that still spooled the events: 65
# (some lines refused, set aside in SPOOL/dead/), 79 (broken configuration,
# spooled with the fallback).
RECORDED_WITH_WARNING = (65, 79)


def run_emitter(exe, data, timeout_s, log):
    """exe record --spawn-flush <data, killed after timeout_s (python 2 has no
    communicate(timeout=)). Returns True on success; never raises."""
    devnull = open(os.devnull, "wb")
    try:
        proc = subprocess.Popen([exe, "record", "--spawn-flush"], stdin=subprocess.PIPE, stdout=devnull,
                                stderr=subprocess.PIPE, close_fds=True)
    except (OSError, ValueError) as e:
        devnull.close()
        log("pkgstream: cannot run %s: %s; changes of this transaction not recorded" % (exe, e))
        return False
    try:
        proc.stdin.write(data.encode("utf-8"))
        proc.stdin.close()
    except (IOError, OSError) as e:
        log("pkgstream: %s record: %s" % (exe, e))
    devnull.close()
    deadline = time.time() + timeout_s
    while proc.poll() is None:
        if time.time() >= deadline:
            try:
                proc.kill()
                proc.wait()
            except OSError:
                pass
            proc.stderr.close()
            log("pkgstream: %s record did not finish within %d ms and was killed" % (exe, int(timeout_s * 1000)))
            return False
        time.sleep(0.005)
    err = proc.stderr.read().decode("utf-8", "replace").strip().replace("\n", " | ")
    proc.stderr.close()
    if proc.returncode in RECORDED_WITH_WARNING:
        log("pkgstream: changes of this transaction recorded, with a warning from %s (exit %s): %s"
            % (exe, proc.returncode, err))
        return True
    if proc.returncode != 0:
        log("pkgstream: %s record failed (exit %s): %s" % (exe, proc.returncode, err))
        return False
    return True


def _rpm_tid(conduit, changes, history_last):
    try:
        import rpm
        base = conduit._base
        ts = rpm.TransactionSet(base.conf.installroot)
        for action, po, _ in changes:
            if action in ("remove", "obsolete"):
                continue
            for hdr in ts.dbMatch("name", po.name):
                if hdr["version"] == po.version and hdr["release"] == po.release and hdr["arch"] == po.arch:
                    return int(hdr["installtid"])
    except Exception:  # noqa: BLE001
        pass
    if history_last is not None and getattr(history_last, "beg_timestamp", None):
        return int(history_last.beg_timestamp)
    return int(time.time())


def posttrans_hook(conduit):
    try:
        _posttrans(conduit)
    except Exception as e:  # noqa: BLE001 -- never fail yum
        try:
            conduit.info(2, "pkgstream: posttrans: %s" % e)
        except Exception:  # noqa: BLE001
            pass


def _posttrans(conduit):
    def compare(a, b):
        import rpm
        return rpm.labelCompare(tuple(str(x) for x in a), tuple(str(x) for x in b))

    changes = changes_from_members(conduit.getTsInfo().getMembers(), compare)
    if not changes:
        return
    emit = os.environ.get("PKGSTREAM_EMIT") or conduit.confString("main", "emitter", default=DEFAULT_EMIT)
    timeout_s = conduit.confInt("main", "timeout_ms", default=5000) / 1000.0
    last = None
    try:
        last = conduit._base.history.last()
    except Exception:  # noqa: BLE001
        pass
    txn = {"rpm_tid": _rpm_tid(conduit, changes, last)}
    if last is not None:
        txn["history_id"] = int(last.tid)
        if getattr(last, "cmdline", None):
            txn["command_line"] = "yum " + last.cmdline
        if getattr(last, "beg_timestamp", None):
            txn["start_time"] = int(last.beg_timestamp)
    loginuid = getattr(last, "loginuid", None) if last is not None else None
    txn["login_user"] = login_user(loginuid, os.environ, _uid_name)
    run_emitter(emit, ndjson(changes, txn, time.time()), timeout_s, lambda msg: conduit.info(2, msg))
