"""Unit tests of the dnf 4 plugin's pure logic (mapping, user, NDJSON, the
bounded emitter run) with a fake `dnf` module; the plugin itself is tested
with the real dnf in tests/tests/hooks_dnf.rs.
Run: python3 -m unittest discover -s producer/dnf/tests"""

import json
import os
import sys
import tempfile
import time
import types
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))

fake_dnf = types.ModuleType("dnf")
fake_dnf.Plugin = object
fake_dnf.transaction = types.SimpleNamespace(**{"PKG_" + n.upper(): i for i, n in enumerate(
    ["install", "upgrade", "upgraded", "downgrade", "downgraded", "reinstall", "reinstalled", "remove", "obsolete", "obsoleted"])})
sys.modules["dnf"] = fake_dnf
sys.path.insert(0, os.path.dirname(HERE))
import pkgstream  # noqa: E402  (producer/dnf/pkgstream.py)


def p(name, version, repo="local", epoch=0, **kw):
    d = {"name": name, "epoch": epoch, "version": version, "release": "1", "arch": "noarch", "repo": repo}
    d.update(kw)
    return d


class Log(object):
    def __init__(self):
        self.lines = []

    def warning(self, fmt, *args):
        self.lines.append(fmt % args)


class DnfPluginLogicTest(unittest.TestCase):
    def test_items_map_to_exact_changes(self):
        items = [
            ("upgrade", p("a", "2")), ("upgraded", p("a", "1", "@System")),
            ("downgrade", p("b", "1")), ("downgraded", p("b", "2", "@System")),
            ("reinstall", p("c", "1")), ("reinstalled", p("c", "1", "@System")),
            ("install", p("d", "1")),
            ("obsolete", p("new", "1")), ("obsoleted", p("old", "5", "@System", replaced_by="new-0:1-1.noarch")),
            ("remove", p("e", "1", "@System")),
        ]
        got = [(a, pk["name"] + "-" + pk["version"], r and r["name"] + "-" + r["version"]) for a, pk, r in pkgstream.changes_from_items(items)]
        self.assertEqual(got, [("upgrade", "a-2", "a-1"), ("downgrade", "b-1", "b-2"), ("reinstall", "c-1", "c-1"),
                               ("install", "d-1", None), ("install", "new-1", None), ("obsolete", "old-5", "new-1"), ("remove", "e-1", None)])

    def test_ndjson_is_hook_input_with_repo_only_on_installed_side(self):
        changes = pkgstream.changes_from_items([("upgrade", p("a", "2", epoch=3)), ("upgraded", p("a", "1", "@System", epoch=3)), ("remove", p("e", "1", "@System"))])
        lines = [json.loads(l) for l in pkgstream.ndjson(changes, "dnf", {"rpm_tid": 5, "history_id": 9}, 1700000000.7).splitlines()]
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[0]["package"], {"name": "a", "epoch": 3, "version": "2", "release": "1", "arch": "noarch", "repo": "local"})
        self.assertEqual(lines[0]["replaced"]["version"], "1")
        self.assertNotIn("repo", lines[1]["package"])
        self.assertEqual((lines[1]["event_time"], lines[1]["transaction"]), ("2023-11-14T22:13:20.700000Z", {"rpm_tid": 5, "history_id": 9}))

    def test_nevra_key_matches_the_rpm_plugin(self):
        self.assertEqual(pkgstream.nevra_key(p("a", "2")), "a-0:2-1.noarch")
        self.assertEqual(pkgstream.nevra_key(p("a", "2", epoch=None)), "a-0:2-1.noarch")

    def test_login_user(self):
        names = {0: "root", 1000: "alice"}.get
        self.assertEqual(pkgstream.login_user("1000\n", {}, names), "alice")
        self.assertEqual(pkgstream.login_user("4294967295", {"SUDO_USER": "bob"}, names), "bob")
        self.assertEqual(pkgstream.login_user("", {"SUDO_USER": "carol"}, names), "carol")

    def test_emitter_missing_failing_hanging_are_logged_and_bounded(self):
        log = Log()
        self.assertFalse(pkgstream.run_emitter("/nonexistent/emit", "{}\n", 1, log))
        fd, bad = tempfile.mkstemp()
        os.write(fd, b"#!/bin/sh\necho 'bad config' >&2\nexit 78\n")
        os.close(fd)
        os.chmod(bad, 0o755)
        self.assertFalse(pkgstream.run_emitter(bad, "{}\n", 1, log))
        fd, hang = tempfile.mkstemp()
        os.write(fd, b"#!/bin/sh\nexec sleep 30\n")
        os.close(fd)
        os.chmod(hang, 0o755)
        started = time.time()
        self.assertFalse(pkgstream.run_emitter(hang, "{}\n", 0.3, log))
        self.assertLess(time.time() - started, 3)
        self.assertIn("cannot run /nonexistent/emit", log.lines[0])
        self.assertIn("exit 78", log.lines[1])
        self.assertIn("bad config", log.lines[1])
        self.assertIn("was killed", log.lines[2])

    def test_emitter_that_spooled_with_a_warning_counts_as_recorded(self):
        # 65: a line refused (set aside in SPOOL/dead/), the rest spooled;
        # 79: broken configuration, spooled with the fallback.
        for code in (65, 79):
            log = Log()
            fd, exe = tempfile.mkstemp()
            os.write(fd, b"#!/bin/sh\ncat >/dev/null\necho 'rejected: line 2' >&2\nexit %d\n" % code)
            os.close(fd)
            os.chmod(exe, 0o755)
            self.assertTrue(pkgstream.run_emitter(exe, "{}\n", 2, log))
            self.assertIn("recorded, with a warning", log.lines[0])
            self.assertIn("exit %d" % code, log.lines[0])
            self.assertIn("rejected: line 2", log.lines[0])
            self.assertNotIn("not recorded", log.lines[0])


if __name__ == "__main__":
    unittest.main()
