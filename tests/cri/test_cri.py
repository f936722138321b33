#!/usr/bin/python3
"""Offline checks for cri.py: no containerd, no VM.

- WebSocket framing encoder/decoder round trips.
- A fake CRI gRPC server on a unix socket plus a fake streaming server that
  behaves like containerd 1.6's (k8s channel protocol over websocket:
  masked client frames required, port header on port-forward channels,
  v4 Status JSON on the exec error channel, single-use URLs), driven
  through the real command line.

Run: /usr/bin/python3 tests/cri/test_cri.py
"""

import base64
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import unittest
from concurrent import futures

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cri  # noqa: E402
import grpc  # noqa: E402

pb = cri.pb
CLI = [sys.executable, os.path.join(HERE, "cri.py")]


class Framing(unittest.TestCase):
    def test_roundtrip(self):
        for n in (0, 1, 125, 126, 127, 65535, 65536, 70000):
            payload = os.urandom(n)
            for key in (None, os.urandom(4)):
                frame = cri.ws_encode(cri.OP_BINARY, payload, key)
                fin, op, got, used, masked = cri.ws_decode(frame + b"extra")
                self.assertEqual((fin, op, got, used, masked), (True, cri.OP_BINARY, payload, len(frame), key is not None))
                if key is not None and n:
                    self.assertNotEqual(frame[-n:], payload)  # really masked
                for cut in (1, len(frame) // 2, len(frame) - 1):  # partial frames
                    if cut > 0:
                        self.assertIsNone(cri.ws_decode(frame[:cut]))

    def test_header_layout(self):
        # Hand-built from RFC 6455 5.2: FIN|opcode, MASK|len, [ext len], key.
        key = b"\x01\x02\x03\x04"
        self.assertEqual(cri.ws_encode(cri.OP_TEXT, b"", key), b"\x81\x80" + key)
        self.assertEqual(cri.ws_encode(cri.OP_CLOSE, b"\x03\xe8"), b"\x88\x02\x03\xe8")
        self.assertEqual(cri.ws_encode(cri.OP_BINARY, b"a" * 300)[:4], b"\x82\x7e\x01\x2c")
        self.assertEqual(cri.ws_encode(cri.OP_BINARY, b"a" * 70000)[:10], b"\x82\x7f" + struct.pack("!Q", 70000))
        self.assertEqual(cri.ws_mask(b"\x00\x00\x00\x00\x00", key), b"\x01\x02\x03\x04\x01")
        self.assertEqual(cri.ws_encode(cri.OP_BINARY, b"ab", fin=False)[:1], b"\x02")

    def test_status(self):
        self.assertEqual(cri.exit_code_from_status('{"metadata":{},"status":"Success"}'), 0)
        st = {"metadata": {}, "status": "Failure", "message": "command terminated with non-zero exit code",
              "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": "42"}]}}
        self.assertEqual(cri.exit_code_from_status(json.dumps(st)), 42)
        with self.assertRaises(cri.StreamError):
            cri.exit_code_from_status('{"status":"Failure","reason":"InternalError","message":"boom"}')
        with self.assertRaises(cri.StreamError):
            cri.exit_code_from_status("")


# ---------------------------------------------------------------------------
# fake streaming server

class FakeStream:
    """Websocket server speaking the k8s channel protocol, one handler per
    single-use token."""

    def __init__(self):
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.tokens = {}
        self.lock = threading.Lock()
        self.errors = []
        threading.Thread(target=self._loop, daemon=True).start()

    def url(self, kind, handler):
        tok = base64.urlsafe_b64encode(os.urandom(6)).decode()
        with self.lock:
            self.tokens[tok] = handler
        return "http://127.0.0.1:%d/%s/%s" % (self.port, kind, tok)

    def _loop(self):
        while True:
            s, _ = self.srv.accept()
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(4096)
            head, _, rest = buf.partition(b"\r\n\r\n")
            line, *hl = head.decode().split("\r\n")
            h = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in hl)}
            tok = line.split()[1].rsplit("/", 1)[1]
            with self.lock:
                handler = self.tokens.pop(tok, None)  # single use, like containerd
            if handler is None:
                s.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 19\r\n\r\n404 page not found\n")
                s.close()
                return
            assert line.startswith("GET "), line
            assert h["upgrade"].lower() == "websocket" and "upgrade" in h["connection"].lower()
            assert h["sec-websocket-version"] == "13"
            protos = [p.strip() for p in h.get("sec-websocket-protocol", "").split(",") if p.strip()]
            assert "v4.channel.k8s.io" in protos, protos
            accept = base64.b64encode(hashlib.sha1(h["sec-websocket-key"].encode() + cri._WS_GUID).digest())
            s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n")
            handler(ServerConn(s, rest))
        except Exception as e:  # surfaced by the tests
            self.errors.append(repr(e))
        finally:
            s.close()


class ServerConn:
    def __init__(self, s, buf):
        self.s, self.buf = s, bytearray(buf)

    def send(self, ch, data, split=False):
        msg = bytes([ch]) + data
        if split:  # fragmented: first part + continuation frame
            self.s.sendall(cri.ws_encode(cri.OP_BINARY, msg[:2], fin=False) + cri.ws_encode(cri.OP_CONT, msg[2:]))
        else:
            self.s.sendall(cri.ws_encode(cri.OP_BINARY, msg))

    def recv(self):
        """(channel, data) of the next data frame; None on close."""
        while True:
            r = cri.ws_decode(self.buf)
            if r:
                fin, op, payload, used, masked = r
                del self.buf[:used]
                assert masked, "client frame not masked"
                if op == cri.OP_CLOSE:
                    return None
                return payload[0], payload[1:]
            chunk = self.s.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def close(self):
        self.s.sendall(cri.ws_encode(cri.OP_CLOSE, b"\x03\xe8"))


def exec_handler(exit_code):
    def h(c):
        c.send(1, b"")  # "ready" notification, as containerd sends
        ch, data = c.recv()
        assert ch == 0, ch
        c.send(1, b"out:" + data, split=True)
        c.send(2, b"err:" + data)
        st = {"metadata": {}, "status": "Success"}
        if exit_code:
            st = {"metadata": {}, "status": "Failure", "message": "non-zero", "reason": "NonZeroExitCode",
                  "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]}}
        c.send(3, json.dumps(st).encode())
        c.close()
    return h


def pf_handler(port, fail=False):
    def h(c):
        c.send(0, struct.pack("<H", port))
        c.send(1, struct.pack("<H", port))
        if fail:
            # containerd's reader goroutine always drains the socket; do the
            # same, or closing with unread bytes makes the kernel send RST.
            c.recv()
            c.send(1, b"error forwarding port %d: connection refused" % port)
            c.close()
            return
        ch, data = c.recv()
        assert ch == 0, ch
        c.send(0, b"echo:")
        c.send(0, data, split=True)
        c.close()
    return h


# ---------------------------------------------------------------------------
# fake CRI server

class FakeCri:
    def __init__(self, sock_path, stream):
        self.stream = stream
        self.pods, self.created, self.updates = {}, [], []
        handlers = {}
        for name, (path, req, resp) in cri.RPCS.items():
            fn = getattr(self, name, None)
            if fn:
                svc = path.split("/")[1]
                handlers.setdefault(svc, {})[name] = grpc.unary_unary_rpc_method_handler(
                    fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString)
        self.server = grpc.server(futures.ThreadPoolExecutor(8))
        for svc, h in handlers.items():
            self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(svc, h)])
        self.server.add_insecure_port("unix:" + sock_path)
        self.server.start()

    def Version(self, req, ctx):
        return pb.VersionResponse(version="0.1.0", runtime_name="containerd", runtime_version="v1.6.20",
                                  runtime_api_version="v1")

    def RunPodSandbox(self, req, ctx):
        pid = "pod%d" % len(self.pods) + "0" * 10
        self.pods[pid] = req
        return pb.RunPodSandboxResponse(pod_sandbox_id=pid)

    def PodSandboxStatus(self, req, ctx):
        r = self.pods.get(req.pod_sandbox_id)
        if r is None:
            ctx.abort(grpc.StatusCode.NOT_FOUND, "an error occurred when try to find sandbox: not found")
        st = pb.PodSandboxStatus(id=req.pod_sandbox_id, metadata=r.config.metadata, labels=r.config.labels)
        st.linux.namespaces.options.CopyFrom(r.config.linux.security_context.namespace_options)
        return pb.PodSandboxStatusResponse(status=st)

    def RemovePodSandbox(self, req, ctx):
        self.pods.pop(req.pod_sandbox_id, None)
        return pb.RemovePodSandboxResponse()

    def CreateContainer(self, req, ctx):
        if not any(p.startswith(req.pod_sandbox_id) for p in self.pods):  # prefixes are fine
            ctx.abort(grpc.StatusCode.NOT_FOUND, "sandbox %s not found" % req.pod_sandbox_id)
        self.created.append(req)
        return pb.CreateContainerResponse(container_id="ctr%d" % len(self.created))

    def ContainerStatus(self, req, ctx):
        return pb.ContainerStatusResponse(status=pb.ContainerStatus(id=req.container_id,
                                                                    state=pb.CONTAINER_EXITED, exit_code=0))

    def UpdateContainerResources(self, req, ctx):
        self.updates.append(req)
        return pb.UpdateContainerResourcesResponse()

    def ExecSync(self, req, ctx):
        return pb.ExecSyncResponse(stdout=b"O:" + " ".join(req.cmd).encode(), stderr=b"E\xff", exit_code=7)

    def Exec(self, req, ctx):
        return pb.ExecResponse(url=self.stream.url("exec", exec_handler(int(req.cmd[-1]))))

    def PortForward(self, req, ctx):
        return pb.PortForwardResponse(url=self.stream.url("portforward", pf_handler(req.port[0],
                                                                                    req.port[0] == 81)))


class Cli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="cri-test-")
        cls.sock = os.path.join(cls.tmp, "cri.sock")
        cls.stream = FakeStream()
        cls.fake = FakeCri(cls.sock, cls.stream)
        cls.env = dict(os.environ, HUSK_CRI_STATE=os.path.join(cls.tmp, "state"))

    @classmethod
    def tearDownClass(cls):
        cls.fake.server.stop(0)

    def run_cli(self, *args, rc=0):
        p = subprocess.run(CLI + ["--socket", self.sock, "--rpc-timeout", "10"] + list(args),
                           capture_output=True, env=self.env, timeout=30)
        self.assertEqual(p.returncode, rc, (args, p.stdout, p.stderr))
        return p

    def tearDown(self):
        self.assertEqual(self.stream.errors, [])

    def test_version(self):
        out = json.loads(self.run_cli("version").stdout)
        self.assertEqual(out["runtime_api_version"], "v1")

    def test_pod_and_container(self):
        pod = self.run_cli("runp", "--name", "p1", "--host-network", "--log-dir", "/var/log/pods/x",
                           "--dns-server", "10.0.0.10", "--annotation", "a=b", "--runtime-handler", "kata"
                           ).stdout.decode().strip()
        sent = self.fake.pods[pod]
        self.assertEqual(sent.runtime_handler, "kata")
        ns = sent.config.linux.security_context.namespace_options
        self.assertEqual((ns.network, ns.pid, ns.ipc), (pb.NODE, pb.CONTAINER, pb.POD))
        self.assertEqual(list(sent.config.dns_config.servers), ["10.0.0.10"])
        cid = self.run_cli("create", pod[:6], "--name", "c1", "--image", "busybox", "--mount", "/h:/c:ro",
                           "--memory", "1048576", "--env", "A=1", "--log-path", "c1.log",
                           "--", "sh", "-c", "echo hi").stdout.decode().strip()
        req = self.fake.created[-1]
        self.assertEqual(cid, "ctr%d" % len(self.fake.created))
        self.assertEqual(req.sandbox_config, sent.config)  # same config as at runp
        self.assertEqual(list(req.config.command) + list(req.config.args), ["sh", "-c", "echo hi"])
        self.assertEqual(req.config.mounts[0], pb.Mount(host_path="/h", container_path="/c", readonly=True))
        self.assertEqual(req.config.linux.resources.memory_limit_in_bytes, 1048576)
        self.assertEqual(req.config.linux.security_context.namespace_options, ns)
        st = json.loads(self.run_cli("inspect", cid).stdout)
        self.assertEqual((st["status"]["state"], st["status"]["exit_code"]), ("CONTAINER_EXITED", 0))
        # Without a state file the config is rebuilt from PodSandboxStatus.
        os.unlink(os.path.join(self.env["HUSK_CRI_STATE"], pod + ".json"))
        p = self.run_cli("create", pod, "--name", "c2", "--image", "busybox")
        self.assertIn(b"no state for pod", p.stderr)
        got = self.fake.created[-1].sandbox_config
        self.assertEqual((got.metadata, got.linux.security_context.namespace_options), (sent.config.metadata, ns))
        self.run_cli("rmp", pod)
        p = self.run_cli("create", pod, "--name", "c3", "--image", "busybox", rc=1)
        self.assertTrue(p.stderr.endswith(b"cri: PodSandboxStatus: NOT_FOUND: an error occurred when try to "
                                          b"find sandbox: not found\n"), p.stderr)

    def test_update(self):
        self.run_cli("update", "ctr1", "--cpu-quota", "50000", "--cpu-period", "100000", "--cpuset", "0")
        r = self.fake.updates[-1].linux
        self.assertEqual((r.cpu_quota, r.cpu_period, r.cpuset_cpus, r.memory_limit_in_bytes),
                         (50000, 100000, "0", 0))

    def test_exec_sync(self):
        p = self.run_cli("exec-sync", "ctr1", "--", "ls", "-l", rc=7)
        self.assertEqual((p.stdout, p.stderr), (b"O:ls -l", b"E\xff"))

    def test_exec_stream(self):
        p = self.run_cli("exec", "ctr1", "--stdin-data", "hi\\n", "--", "x", "3", rc=3)
        self.assertEqual((p.stdout, p.stderr), (b"out:hi\n", b"err:hi\n"))
        self.run_cli("exec", "ctr1", "--stdin-data", "x", "--", "x", "0", rc=0)

    def test_pf_get(self):
        p = self.run_cli("pf-get", "pod", "80", "--send", "GET / HTTP/1.0\\r\\n\\r\\n")
        self.assertEqual(p.stdout, b"echo:GET / HTTP/1.0\r\n\r\n")
        p = self.run_cli("pf-get", "pod", "81", "--send", "x", rc=1)
        self.assertIn(b"connection refused", p.stderr)

    def test_single_use_url(self):
        url = self.run_cli("port-forward-url", "pod", "80").stdout.decode().strip()
        self.assertEqual(cri.port_forward_request(url, 80, b"a", 5), b"echo:a")
        with self.assertRaisesRegex(cri.StreamError, "404"):
            cri.port_forward_request(url, 80, b"a", 5)

    def test_port_forward_listener(self):
        p = subprocess.Popen(CLI + ["--socket", self.sock, "port-forward", "pod", "80", "0"],
                             stdout=subprocess.PIPE, env=self.env)
        try:
            line = p.stdout.readline().decode()
            self.assertTrue(line.startswith("Forwarding from 127.0.0.1:"), line)
            lport = int(line.split(":")[1].split()[0])
            for i in range(3):  # several connections, each with a fresh URL
                with socket.create_connection(("127.0.0.1", lport), timeout=10) as s:
                    s.sendall(b"ping%d" % i)
                    got = b""
                    while True:
                        chunk = s.recv(100)
                        if not chunk:
                            break
                        got += chunk
                self.assertEqual(got, b"echo:ping%d" % i)
        finally:
            p.kill()
            p.wait()
            p.stdout.close()

    def test_help(self):
        out = self.run_cli("--help").stdout.decode()
        for sub in ("runp", "create", "exec-sync", "pf-get", "port-forward", "attach", "stats-all"):
            self.assertIn(sub, out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
