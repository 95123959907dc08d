"""Unit tests of the yum 3 plugin against fakes of yum's plugin conduit API
(no yum 3 runs on this machine). Run: python3 -m unittest discover -s producer/yum/tests"""

import json
import os
import sys
import tempfile
import time
import types
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))

# Fakes of the modules the plugin imports: yum.plugins and rpm.
yum = types.ModuleType("yum")
yum_plugins = types.ModuleType("yum.plugins")
yum_plugins.TYPE_CORE = 0
yum.plugins = yum_plugins
sys.modules["yum"] = yum
sys.modules["yum.plugins"] = yum_plugins


def _cmp_ver(a, b):
    pa = [int(x) if x.isdigit() else x for x in a.split(".")]
    pb = [int(x) if x.isdigit() else x for x in b.split(".")]
    return (pa > pb) - (pa < pb)


class FakeTs(object):
    installed = {}

    def __init__(self, root):
        self.root = root

    def dbMatch(self, tag, name):
        return [h for h in FakeTs.installed.get(name, [])]


fake_rpm = types.ModuleType("rpm")
fake_rpm.labelCompare = lambda a, b: (int(a[0]) > int(b[0])) - (int(a[0]) < int(b[0])) or _cmp_ver(a[1], b[1]) or _cmp_ver(a[2], b[2])
fake_rpm.TransactionSet = FakeTs
sys.modules["rpm"] = fake_rpm

sys.path.insert(0, os.path.dirname(HERE))
import pkgstream  # noqa: E402  (producer/yum/pkgstream.py)


class Po(object):
    def __init__(self, name, version, release="1.el7", arch="x86_64", epoch="0", repoid="base"):
        self.name, self.version, self.release, self.arch, self.epoch, self.repoid = name, version, release, arch, epoch, repoid


class Member(object):
    def __init__(self, po, state, **kw):
        self.po = po
        self.output_state = state
        self.updates = kw.get("updates", [])
        self.downgrades = kw.get("downgrades", [])
        self.updated_by = kw.get("updated_by", [])
        self.downgraded_by = kw.get("downgraded_by", [])
        self.obsoleted_by = kw.get("obsoleted_by", [])
        self.reinstall = kw.get("reinstall", False)


class History(object):
    tid = 17
    cmdline = "-y update openssl"
    loginuid = 1000
    beg_timestamp = 1700000000


class Conduit(object):
    def __init__(self, members, conf=None, history=History()):
        self.members = members
        self.conf = conf or {}
        self.messages = []
        base = types.SimpleNamespace(conf=types.SimpleNamespace(installroot="/"), history=types.SimpleNamespace(last=lambda: history))
        self._base = base

    def getTsInfo(self):
        return types.SimpleNamespace(getMembers=lambda: self.members)

    def confString(self, section, key, default=None):
        return self.conf.get(key, default)

    def confInt(self, section, key, default=None):
        return int(self.conf.get(key, default))

    def info(self, level, msg):
        self.messages.append(msg)


def script(body):
    fd, path = tempfile.mkstemp(suffix=".sh")
    with os.fdopen(fd, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(path, 0o755)
    return path


def transaction_members():
    old_ssl, new_ssl = Po("openssl", "1.0.2k", "19.el7"), Po("openssl", "1.0.2k", "21.el7")
    old_py, new_py = Po("python", "2.7.5", "90.el7"), Po("python", "2.7.5", "88.el7")
    obs_new, obs_old = Po("new-tool", "2.0"), Po("old-tool", "1.0", repoid="installed")
    return [
        Member(new_ssl, pkgstream.TS_UPDATE, updates=[old_ssl]),
        Member(old_ssl, pkgstream.TS_UPDATED, updated_by=[new_ssl]),
        Member(new_py, pkgstream.TS_INSTALL, downgrades=[old_py]),
        Member(old_py, pkgstream.TS_ERASE, downgraded_by=[new_py]),
        Member(Po("bash", "4.2.46", "34.el7"), pkgstream.TS_INSTALL, reinstall=True),
        Member(Po("bash", "4.2.46", "34.el7"), pkgstream.TS_ERASE, reinstall=True),
        Member(Po("tree", "1.6.0", epoch="1"), pkgstream.TS_TRUEINSTALL),
        Member(obs_new, pkgstream.TS_OBSOLETING),
        Member(obs_old, pkgstream.TS_OBSOLETED, obsoleted_by=[obs_new]),
        Member(Po("telnet", "0.17", "66.el7", repoid="installed"), pkgstream.TS_ERASE),
        Member(Po("broken", "1.0"), pkgstream.TS_FAILED),
    ]


EXPECTED = [
    ("upgrade", "openssl-1.0.2k-21.el7", "openssl-1.0.2k-19.el7"),
    ("downgrade", "python-2.7.5-88.el7", "python-2.7.5-90.el7"),
    ("reinstall", "bash-4.2.46-34.el7", "bash-4.2.46-34.el7"),
    ("install", "tree-1.6.0-1.el7", None),
    ("install", "new-tool-2.0-1.el7", None),
    ("obsolete", "old-tool-1.0-1.el7", "new-tool-2.0-1.el7"),
    ("remove", "telnet-0.17-66.el7", None),
]


def nvr(p):
    return None if p is None else "%s-%s-%s" % (p["name"], p["version"], p["release"])


class YumPluginTest(unittest.TestCase):
    def setUp(self):
        FakeTs.installed = {"openssl": [{"version": "1.0.2k", "release": "21.el7", "arch": "x86_64", "installtid": 1700000042}]}
        self.out = tempfile.mktemp()
        self.emit = script("cat > %s; echo \"$*\" >> %s.args" % (self.out, self.out))

    def run_hook(self, conduit):
        pkgstream.posttrans_hook(conduit)
        with open(self.out) as f:
            return [json.loads(l) for l in f if l.strip()]

    def test_plugin_declares_what_yum_requires(self):
        self.assertEqual(pkgstream.requires_api_version, "2.3")
        self.assertIn(yum_plugins.TYPE_CORE, pkgstream.plugin_type)
        with open(os.path.join(os.path.dirname(HERE), "pkgstream.conf")) as f:
            self.assertIn("enabled=1", f.read())

    def test_members_map_to_exact_changes(self):
        changes = pkgstream.changes_from_members(transaction_members(), fake_rpm.labelCompare)
        got = [(a, "%s-%s-%s" % (p.name, p.version, p.release), r and "%s-%s-%s" % (r.name, r.version, r.release)) for a, p, r in changes]
        self.assertEqual(got, EXPECTED)

    def test_posttrans_records_every_change_with_yum_context(self):
        os.environ["PKGSTREAM_EMIT"] = self.emit
        try:
            lines = self.run_hook(Conduit(transaction_members()))
        finally:
            del os.environ["PKGSTREAM_EMIT"]
        self.assertEqual([(l["action"], nvr(l["package"]), nvr(l.get("replaced"))) for l in lines], EXPECTED)
        for l in lines:
            self.assertEqual(l["kind"], "change")
            self.assertEqual(l["source"], "yum")
            t = l["transaction"]
            self.assertEqual((t["rpm_tid"], t["history_id"], t["command_line"], t["start_time"]), (1700000042, 17, "yum -y update openssl", 1700000000))
            self.assertIn("login_user", t)
        self.assertEqual(lines[0]["package"].get("repo"), "base")
        self.assertNotIn("repo", lines[6]["package"])
        self.assertEqual(lines[3]["package"]["epoch"], 1)
        with open(self.out + ".args") as f:
            self.assertEqual(f.read().strip(), "record --spawn-flush")

    def test_login_user_falls_back_to_sudo_user_then_uid(self):
        names = {0: "root", 1000: "alice"}.get
        self.assertEqual(pkgstream.login_user(1000, {}, names), "alice")
        self.assertEqual(pkgstream.login_user(4294967295, {"SUDO_USER": "bob"}, names), "bob")
        self.assertEqual(pkgstream.login_user(None, {}, names, getuid=lambda: 0), "root")

    def test_emitter_missing_is_logged_and_yum_goes_on(self):
        c = Conduit(transaction_members(), conf={"emitter": "/nonexistent/pkgstream-emit"})
        pkgstream.posttrans_hook(c)
        self.assertTrue(any("cannot run /nonexistent/pkgstream-emit" in m for m in c.messages), c.messages)

    def test_emitter_failing_or_hanging_is_bounded_and_logged(self):
        c = Conduit(transaction_members(), conf={"emitter": script("echo 'spool full' >&2; exit 74"), "timeout_ms": 500})
        pkgstream.posttrans_hook(c)
        self.assertTrue(any("exit 74" in m and "spool full" in m for m in c.messages), c.messages)
        c = Conduit(transaction_members(), conf={"emitter": script("exec sleep 30"), "timeout_ms": 300})
        started = time.time()
        pkgstream.posttrans_hook(c)
        self.assertLess(time.time() - started, 3)
        self.assertTrue(any("was killed" in m for m in c.messages), c.messages)

    def test_emitter_that_spooled_with_a_warning_counts_as_recorded(self):
        for code in (65, 79):
            c = Conduit(transaction_members(), conf={"emitter": script("cat >/dev/null; echo 'rejected: line 2' >&2; exit %d" % code)})
            pkgstream.posttrans_hook(c)
            self.assertTrue(any("recorded, with a warning" in m and "exit %d" % code in m and "rejected: line 2" in m
                                for m in c.messages), c.messages)
            self.assertFalse(any("record failed" in m for m in c.messages), c.messages)

    def test_a_broken_conduit_never_raises(self):
        class Broken(Conduit):
            def getTsInfo(self):
                raise RuntimeError("boom")
        c = Broken([])
        pkgstream.posttrans_hook(c)
        self.assertTrue(any("boom" in m for m in c.messages))

    def test_event_times_keep_microseconds(self):
        self.assertEqual(pkgstream.rfc3339(1700000000.7), "2023-11-14T22:13:20.700000Z")
        self.assertEqual(pkgstream.rfc3339(1700000000.9999996), "2023-11-14T22:13:21.000000Z")
        self.assertEqual(pkgstream.rfc3339(0), "1970-01-01T00:00:00.000000Z")

    def test_nothing_committed_runs_nothing(self):
        c = Conduit([Member(Po("broken", "1.0"), pkgstream.TS_FAILED)], conf={"emitter": "/nonexistent"})
        pkgstream.posttrans_hook(c)
        self.assertEqual(c.messages, [])


if __name__ == "__main__":
    unittest.main()
