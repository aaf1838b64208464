# SPDX-License-Identifier: MIT
"""test_k8s.py: the Kubernetes manifests in deploy/k8s/ (docs/SCALING.md, "Kubernetes"),
checked without a cluster.

- Every object parses, and they fit together: the StatefulSet's serviceName is the headless
  Service (which publishes not-ready pods: a draining pod must still be found), the
  Services, the PodDisruptionBudget and the StatefulSet select the pods' labels, the probes
  ask /readyz and /healthz on the port heapd's http key serves, the container's ports are
  the config's, the config is mounted where --config reads it, data_dir is the volume, the
  preStop hook drains over the config's Unix socket, and advertise_url / peer_url name the
  per-pod DNS names of that headless Service in that namespace.
- The ConfigMap's heapd.yaml passes heapd --check-config, and a heapd started on it (its
  addresses moved to loopback and a temporary directory) answers /readyz and /healthz and
  names its sessions after its host, as a pod would.
- kubectl, when installed: `kubectl kustomize` renders the kustomization offline, and
  `kubectl apply -k --dry-run=client` runs against a stub API server that knows only the
  discovery documents of these kinds (kubectl cannot dry-run without a server to ask which
  kinds exist; --validate=false, since the server's OpenAPI schema is what validation
  reads).
"""

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import unittest
import urllib.request

import yaml

SOURCE_DIR = os.environ.get("HEAPD_SOURCE_DIR", ".")
HEAPD = os.environ.get("HEAPD_BIN", "build/bin/heapd")
K8S = os.path.join(SOURCE_DIR, "deploy", "k8s")
FILES = ["namespace.yaml", "configmap.yaml", "services.yaml", "statefulset.yaml", "pdb.yaml"]


def load():
    objs = []
    for name in FILES:
        with open(os.path.join(K8S, name), encoding="utf-8") as f:
            objs += [d for d in yaml.safe_load_all(f) if d]
    return objs


def one(objs, kind, name=None):
    found = [o for o in objs if o["kind"] == kind and (name is None or
                                                        o["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


class ManifestTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.objs = load()
        cls.cm = one(cls.objs, "ConfigMap")
        cls.cfg = yaml.safe_load(cls.cm["data"]["heapd.yaml"])
        cls.sts = one(cls.objs, "StatefulSet")
        cls.pod = cls.sts["spec"]["template"]
        cls.ctr = cls.pod["spec"]["containers"][0]

    def test_kustomization_lists_every_file(self):
        with open(os.path.join(K8S, "kustomization.yaml"), encoding="utf-8") as f:
            self.assertEqual(yaml.safe_load(f)["resources"], FILES)

    def test_objects_fit_together(self):
        ns = one(self.objs, "Namespace")["metadata"]["name"]
        for o in self.objs:
            self.assertIn("apiVersion", o)
            if o["kind"] != "Namespace":
                self.assertEqual(o["metadata"]["namespace"], ns, o["kind"])
        labels = self.pod["metadata"]["labels"]
        self.assertEqual(self.sts["spec"]["selector"]["matchLabels"], labels)
        peers = one(self.objs, "Service", self.sts["spec"]["serviceName"])
        self.assertEqual(peers["spec"]["clusterIP"], "None")
        self.assertTrue(peers["spec"]["publishNotReadyAddresses"])
        lb = one(self.objs, "Service", "heapd")
        for svc in (peers, lb):
            self.assertEqual(svc["spec"]["selector"], labels)
        pdb = one(self.objs, "PodDisruptionBudget")
        self.assertEqual(pdb["spec"]["selector"]["matchLabels"], labels)
        self.assertEqual(pdb["spec"]["maxUnavailable"], 1)
        self.assertGreaterEqual(self.sts["spec"]["replicas"], 3)
        # The per-pod DNS names: POD.SERVICE.NAMESPACE.svc.
        want = "tcp://{node_id}.%s.%s.svc.cluster.local:7420" % (peers["metadata"]["name"], ns)
        self.assertEqual(self.cfg["advertise_url"], want)
        self.assertEqual(self.cfg["peer_url"], want)
        self.assertEqual(self.cfg["node_id"], "@hostname")

    def test_the_pod_and_its_config_agree(self):
        ports = {p["name"]: p["containerPort"] for p in self.ctr["ports"]}
        self.assertEqual(self.cfg["listen"], ["0.0.0.0:%d" % ports["heapd"]])
        self.assertEqual(self.cfg["http"], ["0.0.0.0:%d" % ports["http"]])
        self.assertEqual(self.ctr["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "http"})
        self.assertEqual(self.ctr["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "http"})
        self.assertIn("startupProbe", self.ctr)
        self.assertIn("memory", self.ctr["resources"]["limits"])
        self.assertIn("cpu", self.ctr["resources"]["requests"])
        mounts = {m["name"]: m["mountPath"] for m in self.ctr["volumeMounts"]}
        args = self.ctr["args"]
        self.assertEqual(args[args.index("--config") + 1], mounts["config"] + "/heapd.yaml")
        vols = {v["name"]: v for v in self.pod["spec"]["volumes"]}
        self.assertEqual(vols["config"]["configMap"]["name"], self.cm["metadata"]["name"])
        self.assertEqual(self.cfg["data_dir"], mounts["data"])
        self.assertEqual([c["metadata"]["name"] for c in self.sts["spec"]["volumeClaimTemplates"]],
                         ["data"])
        self.assertEqual(os.path.dirname(self.cfg["unix_socket"]), mounts["run"])
        pre = self.ctr["lifecycle"]["preStop"]["exec"]["command"]
        self.assertEqual(pre, ["heapctl", "--connect", "unix:" + self.cfg["unix_socket"], "drain"])
        # SIGTERM saves every session: the grace period leaves room for it.
        self.assertGreaterEqual(self.pod["spec"]["terminationGracePeriodSeconds"], 60)

    def test_config_is_valid_and_serves_as_a_pod_would(self):
        tmp = tempfile.mkdtemp(prefix="heapd-k8s-")
        try:
            path = os.path.join(tmp, "heapd.yaml")
            with open(path, "w") as f:
                f.write(self.cm["data"]["heapd.yaml"])
            r = subprocess.run([HEAPD, "--check-config", path], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            # The same config on loopback, port 0 and a temporary directory.
            cfg = dict(self.cfg, listen=["127.0.0.1:0"], http=["127.0.0.1:0"],
                       unix_socket=os.path.join(tmp, "heapd.sock"),
                       data_dir=os.path.join(tmp, "data"))
            sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "server"))
            import harness
            d = harness.Daemon(cfg)
            with d:
                host = "".join(ch if ch.isalnum() or ch in "-_" else "-"
                               for ch in socket.gethostname().split(".")[0][:32])
                self.assertEqual(d.http_get("/readyz")[0], 200)
                self.assertEqual(d.http_get("/healthz")[0], 200)
                c = harness.Client(d.tcp_addr)
                r = c.hello()
                self.assertEqual(r.hello.node_id, host)
                self.assertTrue(r.hello.session_id.startswith(host + "."))
                c.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class StubAPI(http.server.BaseHTTPRequestHandler):
    """The discovery documents of the kinds deploy/k8s uses, and 404 for any object (none
    exists yet: apply's dry run would create each)."""

    GROUPS = {"apps": [("statefulsets", "StatefulSet")],
              "policy": [("poddisruptionbudgets", "PodDisruptionBudget")]}
    CORE = [("namespaces", "Namespace", False), ("configmaps", "ConfigMap", True),
            ("services", "Service", True)]

    def log_message(self, *args):
        pass

    def reply(self, code, doc):
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    @staticmethod
    def resource(plural, kind, namespaced=True):
        return {"name": plural, "singularName": kind.lower(), "namespaced": namespaced,
                "kind": kind, "verbs": ["create", "get", "list", "patch", "update", "delete"]}

    def do_GET(self):
        p = self.path.split("?")[0]
        if p == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"]})
        if p == "/apis":
            return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": g + "/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": g + "/v1", "version": "v1"}}
                for g in self.GROUPS]})
        if p == "/api/v1":
            return self.reply(200, {"kind": "APIResourceList", "groupVersion": "v1",
                                    "resources": [self.resource(*r) for r in self.CORE]})
        for g, kinds in self.GROUPS.items():
            if p == "/apis/%s/v1" % g:
                return self.reply(200, {"kind": "APIResourceList", "groupVersion": g + "/v1",
                                        "resources": [self.resource(*k) for k in kinds]})
        if p == "/version":
            return self.reply(200, {"major": "1", "minor": "26", "gitVersion": "v1.26.0"})
        self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "reason": "NotFound", "code": 404})


@unittest.skipUnless(shutil.which("kubectl"), "kubectl is not installed")
class KubectlTest(unittest.TestCase):
    def test_kustomize_renders_offline(self):
        r = subprocess.run(["kubectl", "kustomize", K8S], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        kinds = sorted(d["kind"] for d in yaml.safe_load_all(r.stdout) if d)
        self.assertEqual(kinds, sorted(o["kind"] for o in load()))

    def test_apply_dry_run(self):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StubAPI)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        tmp = tempfile.mkdtemp(prefix="heapd-kube-")
        try:
            env = dict(os.environ, KUBECONFIG=os.path.join(tmp, "none"), HOME=tmp)
            r = subprocess.run(["kubectl", "--server", "http://127.0.0.1:%d" % srv.server_port,
                                "apply", "--dry-run=client", "--validate=false", "-o", "json",
                                "-k", K8S], capture_output=True, text=True, timeout=60,
                               env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
            doc = json.loads(r.stdout)
            items = doc["items"] if doc.get("kind") == "List" else [doc]
            self.assertEqual(sorted((i["kind"], i["metadata"]["name"]) for i in items),
                             sorted((o["kind"], o["metadata"]["name"]) for o in load()))
        finally:
            srv.shutdown()
            srv.server_close()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
