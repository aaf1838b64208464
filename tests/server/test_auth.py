# SPDX-License-Identifier: MIT
"""test_auth.py: tokens and admin tokens, against the real heapd.

With `tokens` set, hello must present one of them or an admin token (compared in constant
time); an admin token also allows server_stats, list_sessions and kill_session. Without
tokens anyone may connect and no one is admin unless an admin token is presented.
"""

import harness as h


class AuthTest(h.unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = h.Daemon({"tokens": ["user-one", "user-two"],
                          "admin_tokens": ["the-admin"]}).start()

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def refused(self, **hello):
        c = self.d.connect()
        r = c.hello(**hello)
        self.assertEqual(r.status.name, "EAUTH")
        self.assertEqual(c.expect_closed(), [])

    def test_token_required(self):
        self.refused()
        self.d.wait_log("hello refused: EAUTH: a token is required")

    def test_wrong_tokens(self):
        self.refused(token="user-on")       # a prefix
        self.refused(token="user-one-and")  # an extension
        self.refused(token="x")
        self.d.wait_log("hello refused: EAUTH: unknown token")

    def test_user_token(self):
        for tok in ("user-one", "user-two"):
            c = self.d.session(token=tok)
            self.assertFalse(c.hello_result.admin)
            c.alloc(size=8)
            for op in ("server_stats", "list_sessions"):
                self.assertEqual(c.call(op).status.name, "EPERM")
            self.assertEqual(c.call("kill_session", session_id="x").status.name, "EPERM")
            c.ok("ping")

    def test_admin_token(self):
        c = self.d.session(token="the-admin")
        self.assertTrue(c.hello_result.admin)
        self.assertGreaterEqual(c.ok("server_stats").sessions, 1)
        c.alloc(size=8)  # an admin session is a session too

    def test_resume_needs_the_token_too(self):
        c = self.d.session(token="user-one")
        hr = c.hello_result
        c.close()
        self.d.wait_log("session %s detached" % hr.session_id)
        self.refused(session_id=hr.session_id, resume_token=hr.resume_token)
        c2 = self.d.connect()
        r = c2.hello(token="user-two", session_id=hr.session_id, resume_token=hr.resume_token)
        self.assertEqual(r.status.code, 0)
        self.assertTrue(r.hello.resumed)


class NoTokensTest(h.unittest.TestCase):
    def test_open_server(self):
        with h.Daemon() as d:
            c = d.session()
            self.assertFalse(c.hello_result.admin)
            self.assertEqual(c.call("server_stats").status.name, "EPERM")
            # A token where none are configured is ignored.
            c2 = d.session(token="anything")
            self.assertFalse(c2.hello_result.admin)

    def test_admin_tokens_only(self):
        with h.Daemon({"admin_tokens": ["boss"]}) as d:
            self.assertFalse(d.session().hello_result.admin)
            self.assertTrue(d.session(token="boss").hello_result.admin)
            c = d.connect()
            self.assertEqual(c.hello(token="bos").status.name, "EAUTH")


if __name__ == "__main__":
    h.main()
