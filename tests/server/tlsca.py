# SPDX-License-Identifier: MIT
"""tlsca.py: throw-away certificate authorities for the TLS tests, made with the `openssl`
command (Debian's openssl package).

    ca = TestCA(dir, "test-ca")
    cert, key = ca.issue("server1", server=True)   # SAN IP:127.0.0.1, DNS:localhost
    cert, key = ca.issue("client1", server=False)  # clientAuth
    ca.cert                                        # the CA's certificate (PEM path)

Keys are P-256 (fast to make); certificates last two days.
"""

import os
import subprocess

OPENSSL = "openssl"


def _run(*args):
    subprocess.run([OPENSSL, *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


class TestCA:
    def __init__(self, directory, name):
        self.dir = directory
        self.name = name
        self.cert = os.path.join(directory, name + ".crt")
        self.key = os.path.join(directory, name + ".key")
        _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", self.key, "-out", self.cert, "-days", "2",
             "-subj", "/CN=" + name)

    def issue(self, cn, server=True, cert=None, key=None):
        """A certificate for cn signed by this CA: (cert path, key path). cert/key name the
        files to write (over any there)."""
        cert = cert or os.path.join(self.dir, cn + ".crt")
        key = key or os.path.join(self.dir, cn + ".key")
        csr = os.path.join(self.dir, cn + ".csr")
        ext = os.path.join(self.dir, cn + ".ext")
        with open(ext, "w") as f:
            if server:
                f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                        "extendedKeyUsage=serverAuth\n")
            else:
                f.write("extendedKeyUsage=clientAuth\n")
        _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key + ".new", "-out", csr, "-subj", "/CN=" + cn)
        _run("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
             "-CAcreateserial", "-out", cert + ".new", "-days", "2", "-extfile", ext)
        # Renamed into place, as a certificate renewal would: a reload reads both whole.
        os.replace(key + ".new", key)
        os.replace(cert + ".new", cert)
        return cert, key
