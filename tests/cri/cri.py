#!/usr/bin/python3
"""Small CRI (runtime.v1) client for husk's integration tests.

Talks to containerd's CRI plugin over its unix socket the way kubelet does,
using only Debian's python3-grpcio and python3-protobuf. The protobuf subset
in cri.proto is compiled with `protoc --python_out` on first import (cached in
$HUSK_CRI_GEN, default $TMPDIR/husk-cri-gen-<uid>); gRPC calls are built by
hand with channel.unary_unary, so no grpc_tools stubs are needed.

The streaming endpoints (Exec, Attach, PortForward) hand back a URL on
containerd's streaming server. We speak the Kubernetes WebSocket channel
protocol ("v4.channel.k8s.io") to it with a tiny RFC 6455 client written on
the standard library. See `cri.py --help` for the command line.
"""

import argparse
import base64
import codecs
import hashlib
import importlib.util
import json
import os
import select
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

import grpc
from google.protobuf import json_format

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "cri.proto")
DEFAULT_SOCKET = "/run/containerd/containerd.sock"


# --------------------------------------------------------------------------
# protobuf: compile cri.proto on demand and import the result

def _gen_dir():
    return os.environ.get("HUSK_CRI_GEN") or os.path.join(
        tempfile.gettempdir(), "husk-cri-gen-%d" % os.getuid())


def _load_pb():
    if "cri_pb2" in sys.modules:  # already loaded (descriptors are global)
        return sys.modules["cri_pb2"]
    gen = _gen_dir()
    os.makedirs(gen, exist_ok=True)
    out = os.path.join(gen, "cri_pb2.py")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(PROTO):
        # Compile into a private directory, then rename into place, so that
        # concurrent test processes never import a half-written file.
        tmp = tempfile.mkdtemp(prefix=".protoc-", dir=gen)
        try:
            r = subprocess.run(["protoc", "-I.", "--python_out=" + tmp, "cri.proto"],
                               cwd=HERE, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError("protoc failed on %s: %s" % (PROTO, r.stderr.strip()))
            os.replace(os.path.join(tmp, "cri_pb2.py"), out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    spec = importlib.util.spec_from_file_location("cri_pb2", out)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["cri_pb2"] = mod
    return mod


pb = _load_pb()


def to_dict(msg):
    """Message -> dict with proto field names; scalars at their default
    value are kept too (so e.g. exit_code 0 / CONTAINER_CREATED show up).
    Note that int64/uint64 values become strings, per the proto3 JSON rules."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     including_default_value_fields=True)


def to_json(msg):
    return json.dumps(to_dict(msg), sort_keys=True)


# --------------------------------------------------------------------------
# gRPC client

class CriError(Exception):
    """A CRI call failed; carries the RPC name, gRPC status code and details."""

    def __init__(self, rpc, code, details):
        self.rpc, self.code, self.details = rpc, code, details
        name = code.name if hasattr(code, "name") else str(code)
        super().__init__("%s: %s: %s" % (rpc, name, details))


_RUNTIME_RPCS = [
    "Version", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox",
    "PodSandboxStatus", "ListPodSandbox", "CreateContainer", "StartContainer",
    "StopContainer", "RemoveContainer", "ListContainers", "ContainerStatus",
    "UpdateContainerResources", "ExecSync", "Exec", "Attach", "PortForward",
    "ContainerStats", "ListContainerStats", "Status",
]
_IMAGE_RPCS = ["ListImages", "ImageStatus", "PullImage"]

# RPC name -> (full method path, request class, response class). Every CRI
# RPC X takes XRequest and returns XResponse.
RPCS = {}
for _svc, _names in (("RuntimeService", _RUNTIME_RPCS), ("ImageService", _IMAGE_RPCS)):
    for _n in _names:
        RPCS[_n] = ("/runtime.v1.%s/%s" % (_svc, _n),
                    getattr(pb, _n + "Request"), getattr(pb, _n + "Response"))

_DEFAULT = object()  # "use the client's default deadline"


def _rpc(name, *positional):
    """Make a Cri method for RPC `name`. It takes either a ready request
    message, or the request's fields: `positional` names the fields that may
    be given positionally, any field may be given by keyword."""
    req_cls = RPCS[name][1]

    def method(self, *args, timeout=_DEFAULT, **fields):
        if len(args) == 1 and isinstance(args[0], req_cls) and not fields:
            req = args[0]
        else:
            if len(args) > len(positional):
                raise TypeError("%s takes at most %d positional arguments" % (name, len(positional)))
            fields.update(zip(positional, args))
            req = req_cls(**fields)
        return self.call(name, req, timeout=timeout)

    method.__name__ = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    method.__doc__ = "%s(%s) -> %sResponse" % (name, ", ".join(positional), name)
    return method


class Cri:
    """CRI client over a unix socket. Each method returns the response
    message and raises CriError on failure. `timeout` is the default gRPC
    deadline in seconds (None = no deadline)."""

    def __init__(self, socket_path=DEFAULT_SOCKET, timeout=120.0):
        target = socket_path if socket_path.startswith("unix:") else "unix://" + os.path.abspath(socket_path)
        # Same 16 MiB receive limit kubelet uses.
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 16 << 20)])
        self.timeout = timeout
        self._calls = {}

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def call(self, rpc, request, timeout=_DEFAULT):
        path, req_cls, resp_cls = RPCS[rpc]
        fn = self._calls.get(rpc)
        if fn is None:
            fn = self._calls[rpc] = self.channel.unary_unary(
                path, request_serializer=req_cls.SerializeToString,
                response_deserializer=resp_cls.FromString)
        try:
            return fn(request, timeout=self.timeout if timeout is _DEFAULT else timeout)
        except grpc.RpcError as e:
            raise CriError(rpc, e.code(), e.details()) from None

    # -- plain RPCs; positional arguments map to request fields
    version = _rpc("Version", "version")
    status = _rpc("Status", "verbose")
    stop_pod_sandbox = _rpc("StopPodSandbox", "pod_sandbox_id")
    pod_sandbox_status = _rpc("PodSandboxStatus", "pod_sandbox_id", "verbose")
    list_pod_sandbox = _rpc("ListPodSandbox", "filter")
    start_container = _rpc("StartContainer", "container_id")
    remove_container = _rpc("RemoveContainer", "container_id")
    list_containers = _rpc("ListContainers", "filter")
    container_status = _rpc("ContainerStatus", "container_id", "verbose")
    update_container_resources = _rpc("UpdateContainerResources", "container_id", "linux")
    exec = _rpc("Exec", "container_id", "cmd", "tty", "stdin", "stdout", "stderr")
    attach = _rpc("Attach", "container_id", "stdin", "tty", "stdout", "stderr")
    port_forward = _rpc("PortForward", "pod_sandbox_id", "port")
    container_stats = _rpc("ContainerStats", "container_id")
    list_container_stats = _rpc("ListContainerStats", "filter")
    list_images = _rpc("ListImages", "filter")
    pull_image = _rpc("PullImage", "image", "auth", "sandbox_config")
    _run_pod_sandbox = _rpc("RunPodSandbox", "config", "runtime_handler")
    _remove_pod_sandbox = _rpc("RemovePodSandbox", "pod_sandbox_id")
    _create_container = _rpc("CreateContainer", "pod_sandbox_id", "config", "sandbox_config")
    _image_status = _rpc("ImageStatus", "image", "verbose")

    # -- RPCs with a little extra convenience

    def run_pod_sandbox(self, config, runtime_handler="", **kw):
        """RunPodSandbox; also records the config in the pod state directory
        so that create_container can send it again later."""
        if isinstance(config, pb.RunPodSandboxRequest):
            req = config
        else:
            req = pb.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        resp = self._run_pod_sandbox(req, **kw)
        try:
            save_pod_state(resp.pod_sandbox_id, req.config, req.runtime_handler)
        except OSError as e:
            print("cri: warning: cannot save pod state: %s" % e, file=sys.stderr)
        return resp

    def remove_pod_sandbox(self, pod_sandbox_id, **kw):
        """RemovePodSandbox; also drops the pod's state file."""
        resp = self._remove_pod_sandbox(pod_sandbox_id, **kw)
        drop_pod_state(getattr(pod_sandbox_id, "pod_sandbox_id", pod_sandbox_id))
        return resp

    def create_container(self, pod_sandbox_id, config=None, sandbox_config=None, **kw):
        """CreateContainer. Like kubelet, CRI wants the pod's config again:
        taken from the pod state file when not given. The pod's namespace
        options are copied into the container's security context (kubelet
        does the same) unless the container config sets its own."""
        if isinstance(pod_sandbox_id, pb.CreateContainerRequest):
            return self._create_container(pod_sandbox_id, **kw)
        if sandbox_config is None:
            sandbox_config = self.sandbox_config(pod_sandbox_id)
        cfg = pb.ContainerConfig()
        cfg.CopyFrom(config)
        pod_ns = sandbox_config.linux.security_context
        if pod_ns.HasField("namespace_options") and not cfg.linux.security_context.HasField("namespace_options"):
            cfg.linux.security_context.namespace_options.CopyFrom(pod_ns.namespace_options)
        return self._create_container(pod_sandbox_id, cfg, sandbox_config, **kw)

    def sandbox_config(self, pod_sandbox_id):
        """The PodSandboxConfig a pod was started with: from the state file
        if we started it, else a best-effort rebuild from PodSandboxStatus
        (which lacks hostname, log directory, DNS and cgroup parent)."""
        cfg = load_pod_state(pod_sandbox_id)
        if cfg is not None:
            return cfg
        print("cri: warning: no state for pod %s, rebuilding its config from status" % pod_sandbox_id,
              file=sys.stderr)
        st = self.pod_sandbox_status(pod_sandbox_id).status
        cfg = pb.PodSandboxConfig(metadata=st.metadata, labels=dict(st.labels), annotations=dict(st.annotations))
        cfg.linux.security_context.namespace_options.CopyFrom(st.linux.namespaces.options)
        return cfg

    def stop_container(self, container_id, timeout=0, deadline=_DEFAULT):
        """StopContainer; `timeout` is the grace period in seconds (a request
        field), so the gRPC deadline is given as `deadline`; by default the
        client's deadline stretched by the grace period."""
        if deadline is _DEFAULT:
            deadline = None if self.timeout is None else self.timeout + timeout
        req = pb.StopContainerRequest(container_id=container_id, timeout=timeout)
        return self.call("StopContainer", req, timeout=deadline)

    def exec_sync(self, container_id, cmd, timeout=0, deadline=_DEFAULT):
        """ExecSync; `timeout` in seconds (0 = none) is the request field.
        The gRPC deadline defaults to that plus the client's deadline, or
        none at all when the exec has no timeout."""
        if deadline is _DEFAULT:
            deadline = None if not timeout or self.timeout is None else timeout + self.timeout
        req = pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout)
        return self.call("ExecSync", req, timeout=deadline)

    def image_status(self, image, verbose=False, **kw):
        if isinstance(image, str):
            image = pb.ImageSpec(image=image)
        return self._image_status(image, verbose, **kw)


# --------------------------------------------------------------------------
# config builders

def _kv(items):
    """dict, or iterable of "K=V" strings / (k, v) pairs -> dict."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out = {}
    for it in items:
        k, v = it.split("=", 1) if isinstance(it, str) else it
        out[k] = v
    return out


def pod_config(name, uid=None, namespace="default", hostname=None, log_dir=None,
               host_network=False, host_pid=False, host_ipc=False, dns=None,
               cgroup_parent=None, annotations=None, labels=None, share_pid=False, privileged=False):
    """A PodSandboxConfig shaped like kubelet's. Namespaces: network and IPC
    per pod unless host_*; PID per container unless share_pid or host_pid
    (kubelet's default for shareProcessNamespace=false). `dns` is a DNSConfig
    or a dict with servers/searches/options lists."""
    uid = uid or str(uuid.uuid4())
    if hostname is None:
        hostname = "" if host_network else name
    all_labels = {"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                  "io.kubernetes.pod.uid": uid}
    all_labels.update(_kv(labels))
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
        hostname=hostname, log_directory=log_dir or "",
        labels=all_labels, annotations=_kv(annotations))
    if dns:
        cfg.dns_config.CopyFrom(dns if isinstance(dns, pb.DNSConfig) else pb.DNSConfig(**dns))
    lx = cfg.linux
    lx.cgroup_parent = cgroup_parent or ""
    lx.security_context.privileged = privileged
    ns = lx.security_context.namespace_options
    ns.network = pb.NODE if host_network else pb.POD
    ns.pid = pb.NODE if host_pid else (pb.POD if share_pid else pb.CONTAINER)
    ns.ipc = pb.NODE if host_ipc else pb.POD
    return cfg


def _mount(m):
    """Mount message, dict, (host, ctr[, ro]) or "HOST:CTR[:ro]" -> Mount."""
    if isinstance(m, pb.Mount):
        return m
    if isinstance(m, dict):
        return pb.Mount(**m)
    if isinstance(m, str):
        parts = m.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise ValueError("mount must be HOST:CTR[:ro|rw], got %r" % m)
        m = (parts[0], parts[1], len(parts) == 3 and parts[2] == "ro")
    host, ctr, *ro = m
    return pb.Mount(host_path=host, container_path=ctr, readonly=bool(ro and ro[0]))


def container_config(name, image, command=(), args=(), log_path=None, mounts=(),
                     memory_limit=None, cpu_quota=None, cpu_period=None, cpuset=None,
                     oom_score_adj=None, tty=False, stdin=False, envs=None,
                     cpu_shares=None, working_dir=None, labels=None, annotations=None,
                     privileged=False):
    """A ContainerConfig. `command`/`args` are the k8s command (entrypoint
    override) and args; empty means the image's. `log_path` is relative to
    the pod's log directory. Resources are only sent when some are given."""
    if isinstance(command, str):
        command = [command]
    cfg = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=0),
        image=pb.ImageSpec(image=image),
        command=list(command), args=list(args),
        working_dir=working_dir or "",
        envs=[pb.KeyValue(key=k, value=v) for k, v in _kv(envs).items()],
        mounts=[_mount(m) for m in mounts],
        labels=_kv(labels), annotations=_kv(annotations),
        log_path=log_path or "", tty=tty, stdin=stdin)
    cfg.linux.security_context.privileged = privileged
    res = _resources(memory_limit, cpu_quota, cpu_period, cpuset, oom_score_adj, cpu_shares)
    if res is not None:
        cfg.linux.resources.CopyFrom(res)
    return cfg


def _resources(memory_limit=None, cpu_quota=None, cpu_period=None, cpuset=None,
               oom_score_adj=None, cpu_shares=None):
    """LinuxContainerResources with only the given fields set, or None."""
    given = {k: v for k, v in (("memory_limit_in_bytes", memory_limit), ("cpu_quota", cpu_quota),
                               ("cpu_period", cpu_period), ("cpuset_cpus", cpuset),
                               ("oom_score_adj", oom_score_adj), ("cpu_shares", cpu_shares))
             if v is not None}
    return pb.LinuxContainerResources(**given) if given else None


# --------------------------------------------------------------------------
# pod state: the PodSandboxConfig each pod was run with, one JSON file per pod

def state_dir():
    return os.environ.get("HUSK_CRI_STATE", "/tmp/husk-cri-state")


def _state_file(pod_id):
    d = state_dir()
    path = os.path.join(d, pod_id + ".json")
    if not os.path.exists(path) and os.path.isdir(d):
        # containerd accepts unique ID prefixes; so do we.
        hits = [f for f in os.listdir(d) if f.startswith(pod_id) and f.endswith(".json")]
        if len(hits) == 1:
            path = os.path.join(d, hits[0])
    return path


def save_pod_state(pod_id, config, runtime_handler=""):
    d = state_dir()
    os.makedirs(d, exist_ok=True)
    data = {"pod_id": pod_id, "runtime_handler": runtime_handler,
            "config": json_format.MessageToDict(config, preserving_proto_field_name=True)}
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, os.path.join(d, pod_id + ".json"))


def load_pod_state(pod_id):
    """The saved PodSandboxConfig, or None."""
    try:
        with open(_state_file(pod_id)) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    return json_format.ParseDict(data["config"], pb.PodSandboxConfig())


def drop_pod_state(pod_id):
    try:
        os.unlink(_state_file(pod_id))
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------
# WebSocket (RFC 6455) client, just enough for containerd's stream server

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class StreamError(Exception):
    """Handshake, framing or protocol failure on a streaming connection."""


def ws_mask(data, key):
    """XOR `data` with the 4-byte `key` repeated (masking == unmasking)."""
    n = len(data)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def ws_encode(opcode, payload, mask_key=None, fin=True):
    """One frame. Clients must mask (pass a random 4-byte mask_key);
    servers must not."""
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask_key is not None else 0
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask_key is None:
        return head + bytes(payload)
    return head + mask_key + ws_mask(bytes(payload), mask_key)


def ws_decode(buf):
    """Parse one frame from the start of `buf`. Returns None if more bytes
    are needed, else (fin, opcode, payload, bytes_used, masked)."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    if b0 & 0x70:
        raise StreamError("websocket frame uses RSV bits (no extension was negotiated)")
    n, pos = b1 & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, pos = struct.unpack_from("!H", buf, 2)[0], 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, pos = struct.unpack_from("!Q", buf, 2)[0], 10
    key = None
    if b1 & 0x80:
        if len(buf) < pos + 4:
            return None
        key, pos = bytes(buf[pos:pos + 4]), pos + 4
    if len(buf) < pos + n:
        return None
    payload = bytes(buf[pos:pos + n])
    if key is not None:
        payload = ws_mask(payload, key)
    return bool(b0 & 0x80), b0 & 0x0F, payload, pos + n, key is not None


class WebSocket:
    """Blocking WebSocket client. recv() may be called from one thread while
    send() is called from others. Socket timeouts surface as TimeoutError
    and leave the connection usable (partial frames stay buffered)."""

    def __init__(self, url, subprotocols=(), timeout=30.0):
        u = urllib.parse.urlsplit(url)
        secure = u.scheme in ("https", "wss")
        if u.scheme not in ("http", "https", "ws", "wss"):
            raise StreamError("unsupported URL scheme in %r" % url)
        sock = socket.create_connection((u.hostname, u.port or (443 if secure else 80)), timeout=timeout)
        if secure:
            # containerd's stream server uses a self-signed cert when TLS is on.
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname=u.hostname)
        self.sock = sock
        self.buf = bytearray()
        self._frags, self._frag_op = [], None
        self._send_lock = threading.Lock()
        self.close_sent = False
        self.closed_by_peer = False
        self.subprotocol = self._handshake(u, subprotocols)

    def _handshake(self, u, subprotocols):
        key = base64.b64encode(os.urandom(16)).decode()
        target = (u.path or "/") + ("?" + u.query if u.query else "")
        lines = ["GET %s HTTP/1.1" % target, "Host: %s" % u.netloc, "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13"]
        if subprotocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise StreamError("connection closed during websocket handshake")
            self.buf += chunk
            if len(self.buf) > 65536:
                raise StreamError("oversized handshake response")
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        status, *hlines = head.decode("latin-1").split("\r\n")
        parts = status.split(" ", 2)
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers = {}
        for h in hlines:
            k, _, v = h.partition(":")
            headers[k.strip().lower()] = v.strip()
        if code != 101:
            raise StreamError("websocket handshake refused: %s: %s" % (status, self._error_body(headers)))
        want = base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != want:
            raise StreamError("bad Sec-WebSocket-Accept in handshake response")
        proto = headers.get("sec-websocket-protocol", "")
        if subprotocols and proto not in subprotocols:
            raise StreamError("server chose subprotocol %r, we offered %s" % (proto, list(subprotocols)))
        return proto

    def _error_body(self, headers):
        """Read a (small) error body after a refused handshake."""
        body = bytes(self.buf)
        want = int(headers.get("content-length", "-1") or -1)
        self.sock.settimeout(2.0)
        try:
            while len(body) < 4096 and (want < 0 or len(body) < want):
                chunk = self.sock.recv(4096)
                if not chunk:
                    break
                body += chunk
        except OSError:
            pass
        self.sock.close()
        return body.decode("utf-8", "replace").strip() or "(no body)"

    def settimeout(self, t):
        self.sock.settimeout(t)

    def buffered(self):
        """True if a frame can be had without waiting on the socket."""
        pending = getattr(self.sock, "pending", None)  # TLS: decrypted, unread bytes
        return ws_decode(self.buf) is not None or bool(pending and pending())

    def send(self, opcode, payload):
        frame = ws_encode(opcode, payload, mask_key=os.urandom(4))
        with self._send_lock:
            if self.close_sent:
                raise StreamError("websocket already closed")
            if opcode == OP_CLOSE:
                self.close_sent = True
            self.sock.sendall(frame)

    def _frame(self):
        """Next raw frame, or None at EOF."""
        while True:
            r = ws_decode(self.buf)
            if r is not None:
                del self.buf[:r[3]]
                if r[4]:
                    raise StreamError("server sent a masked frame")
                return r[0], r[1], r[2]
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                # The server closes right after its close frame; if some of
                # our data was still unread there, its kernel answers with a
                # reset. Treat that like end of stream, keeping what we have.
                chunk = b""
            if not chunk:
                return None
            self.buf += chunk

    def recv(self):
        """Next data message as (opcode, payload), or None once the peer has
        closed. Answers pings and close frames itself."""
        while True:
            fr = self._frame()
            if fr is None:
                self.closed_by_peer = True
                return None
            fin, op, payload = fr
            if op == OP_PING:
                self._try_send(OP_PONG, payload)
            elif op == OP_PONG:
                pass
            elif op == OP_CLOSE:
                self.closed_by_peer = True
                self._try_send(OP_CLOSE, payload[:2])  # echo the status code
                return None
            elif op == OP_CONT or not fin:
                if op != OP_CONT:
                    self._frag_op, self._frags = op, []
                self._frags.append(payload)
                if fin:
                    msg = (self._frag_op, b"".join(self._frags))
                    self._frags, self._frag_op = [], None
                    return msg
            else:
                return op, payload

    def _try_send(self, op, payload):
        try:
            self.send(op, payload)
        except (OSError, StreamError):
            pass

    def close(self, code=1000):
        if not self.close_sent:
            self._try_send(OP_CLOSE, struct.pack("!H", code))
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# --------------------------------------------------------------------------
# Kubernetes channel protocol on top of WebSocket
#
# Each binary message is one channel byte followed by data ("channel.k8s.io";
# the "base64." variant uses an ASCII digit and base64 text instead). Exec and
# attach use channels 0 stdin, 1 stdout, 2 stderr, 3 error (a JSON
# metav1.Status with the "v4." protocols), 4 resize. Port forward uses
# channel 2i for data and 2i+1 for errors of the i-th requested port, and
# the server's first message on each of those channels is the port number
# as 2 bytes little endian. There is no way to half-close a channel, so the
# remote side never sees EOF on stdin / forwarded data before the websocket
# itself closes.

CHANNEL_PROTOCOL = "v4.channel.k8s.io"
STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4


class ChannelConn:
    def __init__(self, url, timeout=30.0, protocols=(CHANNEL_PROTOCOL,)):
        self.ws = WebSocket(url, protocols, timeout)
        self.base64 = self.ws.subprotocol.startswith("base64.") or ".base64." in self.ws.subprotocol

    def send(self, channel, data):
        if self.base64:
            self.ws.send(OP_TEXT, str(channel).encode() + base64.b64encode(data))
        else:
            self.ws.send(OP_BINARY, bytes([channel]) + data)

    def recv(self, skip_empty=True):
        """(channel, data) for the next message, None when closed. Empty
        messages (containerd sends one as a "ready" signal) are skipped
        unless skip_empty is false."""
        while True:
            msg = self.ws.recv()
            if msg is None:
                return None
            op, payload = msg
            if not payload:
                continue
            if op == OP_TEXT or self.base64:
                ch, data = payload[0] - ord("0"), base64.b64decode(payload[1:])
            else:
                ch, data = payload[0], payload[1:]
            if data or not skip_empty:
                return ch, data

    def close(self):
        self.ws.close()


def exit_code_from_status(raw):
    """Exit code from the v4 error-channel Status JSON. Raises StreamError
    for failures that are not a plain non-zero exit."""
    if not raw.strip():
        raise StreamError("stream closed without a status")
    st = json.loads(raw)
    if st.get("status") == "Success":
        return 0
    if st.get("reason") == "NonZeroExitCode":
        for cause in (st.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                return int(cause.get("message"))
    raise StreamError(st.get("message") or raw)


def remote_command(url, stdin_data=None, out=None, err=None, timeout=None, size=None):
    """Run an Exec/Attach stream: send the terminal size `size` (width,
    height) first if given, as kubectl does for -t, then stdin_data (if any)
    on stdin; copy stdout/stderr to the binary files `out`/`err` as they come.
    Returns (status_json_text, timed_out). timeout=None waits for the server
    to close the stream."""
    conn = ChannelConn(url)
    status = b""
    deadline = None if not timeout else time.monotonic() + timeout
    try:
        if size:
            conn.send(RESIZE, json.dumps({"Width": size[0], "Height": size[1]}).encode())
        if stdin_data:
            conn.send(STDIN, stdin_data)
        while True:
            conn.ws.settimeout(None if deadline is None else max(0.001, deadline - time.monotonic()))
            try:
                m = conn.recv()
            except TimeoutError:
                return status.decode("utf-8", "replace"), True
            if m is None:
                return status.decode("utf-8", "replace"), False
            ch, data = m
            dst = {STDOUT: out, STDERR: err}.get(ch)
            if dst is not None:
                dst.write(data)
                dst.flush()
            elif ch == ERROR:
                status += data
    finally:
        conn.close()


class PortForwardError(StreamError):
    """Text the server sent on a port's error channel."""

    def __init__(self, message, data=b""):
        super().__init__(message)
        self.data = data


class _PortPrefix:
    """Strips (and checks) the 2-byte port header that starts a channel."""

    def __init__(self, port):
        self.want = struct.pack("<H", port)
        self.seen = b""

    def strip(self, data):
        need = 2 - len(self.seen)
        if need > 0:
            self.seen += data[:need]
            data = data[need:]
            if len(self.seen) == 2 and self.seen != self.want:
                raise StreamError("port header %r does not match port" % self.seen)
        return data


def port_forward_request(url, port, payload, read_timeout=10.0):
    """One forwarded connection: send `payload` to `port`, return all bytes
    that come back until the server closes or read_timeout seconds pass.
    Error-channel text raises PortForwardError (with .data set)."""
    conn = ChannelConn(url, timeout=read_timeout)
    prefixes = {0: _PortPrefix(port), 1: _PortPrefix(port)}
    data, errtext = b"", b""
    deadline = time.monotonic() + read_timeout
    try:
        if payload:
            conn.send(0, payload)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            conn.ws.settimeout(left)
            try:
                m = conn.recv()
            except TimeoutError:
                break
            if m is None:
                break
            ch, chunk = m
            if ch in prefixes:
                chunk = prefixes[ch].strip(chunk)
            if ch == 0:
                data += chunk
            elif ch == 1:
                errtext += chunk
    finally:
        conn.close()
    if errtext:
        raise PortForwardError(errtext.decode("utf-8", "replace"), data)
    return data


def _pf_connection(cri, pod_id, port, client, linger):
    """Pipe one accepted local TCP connection through a fresh websocket.
    containerd's stream URLs are single use, so each connection asks for
    its own URL. One thread multiplexes both sockets with select(): an
    SSLSocket must not be read and written from two threads at once."""
    try:
        conn = ChannelConn(cri.port_forward(pod_id, [port]).url)
    except (CriError, StreamError, OSError) as e:
        print("cri: port-forward: %s" % e, file=sys.stderr)
        client.close()
        return
    ws = conn.ws
    prefixes = {0: _PortPrefix(port), 1: _PortPrefix(port)}
    local_open, last = True, time.monotonic()
    try:
        while True:
            if ws.buffered():
                ready = [ws.sock]
            else:
                ready = select.select([ws.sock] + ([client] if local_open else []), [], [], 1.0)[0]
            if client in ready:
                try:
                    data = client.recv(65536)
                except OSError:
                    data = b""
                if data:
                    conn.send(0, data)
                else:
                    local_open = False
            if ws.sock in ready:
                m = conn.recv(skip_empty=False)
                if m is None:
                    break
                last = time.monotonic()
                ch, data = m
                if ch in prefixes:
                    data = prefixes[ch].strip(data)
                if ch == 0 and data:
                    client.sendall(data)
                elif ch == 1 and data:
                    print("cri: port-forward: %s" % data.decode("utf-8", "replace"), file=sys.stderr)
            elif not local_open and time.monotonic() - last > linger:
                # The local side is done sending and the pod side stays quiet;
                # we cannot half-close, so give up after `linger` seconds.
                break
    except (OSError, StreamError) as e:
        print("cri: port-forward: %s" % e, file=sys.stderr)
    finally:
        conn.close()
        try:
            client.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        client.close()


def serve_port_forward(cri, pod_id, port, local_port, address="127.0.0.1", linger=10.0):
    """Listen on address:local_port and forward each connection to `port`
    in the pod, until killed."""
    srv = socket.create_server((address, local_port))
    print("Forwarding from %s:%d -> %d" % (address, srv.getsockname()[1], port), flush=True)
    while True:
        client, _ = srv.accept()
        threading.Thread(target=_pf_connection, args=(cri, pod_id, port, client, linger), daemon=True).start()


# --------------------------------------------------------------------------
# command line

def _unescape(text):
    """Interpret backslash escapes (\\r, \\n, \\x00, \\\\) in CLI payloads."""
    return codecs.escape_decode(text.encode("utf-8"))[0]


def _payload(text, path):
    if path == "-":
        return sys.stdin.buffer.read()
    if path:
        with open(path, "rb") as f:
            return f.read()
    return _unescape(text) if text is not None else None


def _print(msg):
    print(to_json(msg))


def cmd_version(c, a):
    _print(c.version("v1"))


def cmd_status(c, a):
    _print(c.status(a.verbose))


def cmd_runp(c, a):
    dns = None
    if a.dns_server or a.dns_search or a.dns_option:
        dns = {"servers": a.dns_server, "searches": a.dns_search, "options": a.dns_option}
    cfg = pod_config(a.name, a.uid, namespace=a.namespace, hostname=a.hostname, log_dir=a.log_dir,
                     host_network=a.host_network, host_pid=a.host_pid, host_ipc=a.host_ipc, dns=dns,
                     cgroup_parent=a.cgroup_parent, annotations=a.annotation, labels=a.label,
                     share_pid=a.share_pid, privileged=a.privileged)
    print(c.run_pod_sandbox(cfg, a.runtime_handler).pod_sandbox_id)


def cmd_create(c, a):
    cmd = a.cmd or []
    cfg = container_config(a.name, a.image, cmd[:1], cmd[1:], log_path=a.log_path, mounts=a.mount,
                           memory_limit=a.memory, cpu_quota=a.cpu_quota, cpu_period=a.cpu_period,
                           cpuset=a.cpuset, oom_score_adj=a.oom_score_adj, tty=a.tty, stdin=a.stdin,
                           envs=a.env, cpu_shares=a.cpu_shares, working_dir=a.workdir,
                           labels=a.label, annotations=a.annotation, privileged=a.privileged)
    print(c.create_container(a.pod, cfg).container_id)


def cmd_start(c, a):
    c.start_container(a.id)


def cmd_stop(c, a):
    c.stop_container(a.id, a.timeout)


def cmd_rm(c, a):
    c.remove_container(a.id)


def cmd_stopp(c, a):
    c.stop_pod_sandbox(a.id)


def cmd_rmp(c, a):
    c.remove_pod_sandbox(a.id)


def cmd_inspect(c, a):
    _print(c.container_status(a.id, a.verbose))


def cmd_inspectp(c, a):
    _print(c.pod_sandbox_status(a.id, a.verbose))


_POD_STATES = {"ready": "SANDBOX_READY", "notready": "SANDBOX_NOTREADY"}
_CTR_STATES = {"created": "CONTAINER_CREATED", "running": "CONTAINER_RUNNING",
               "exited": "CONTAINER_EXITED", "unknown": "CONTAINER_UNKNOWN"}


def cmd_pods(c, a):
    f = pb.PodSandboxFilter(label_selector=_kv(a.label))
    if a.state:
        f.state.state = pb.PodSandboxState.Value(_POD_STATES[a.state])
    _print(c.list_pod_sandbox(f))


def cmd_ps(c, a):
    f = pb.ContainerFilter(pod_sandbox_id=a.pod or "", label_selector=_kv(a.label))
    if a.state:
        f.state.state = pb.ContainerState.Value(_CTR_STATES[a.state])
    _print(c.list_containers(f))


def cmd_exec_sync(c, a):
    if not a.cmd:
        raise SystemExit("cri: exec-sync: missing command after --")
    r = c.exec_sync(a.id, a.cmd, a.timeout)
    sys.stdout.buffer.write(r.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(r.stderr)
    sys.stderr.buffer.flush()
    return r.exit_code


def cmd_stats(c, a):
    _print(c.container_stats(a.id))


def cmd_stats_all(c, a):
    _print(c.list_container_stats(pb.ContainerStatsFilter(pod_sandbox_id=a.pod or "")))


def cmd_update(c, a):
    res = _resources(a.memory, a.cpu_quota, a.cpu_period, a.cpuset, None, a.cpu_shares)
    if res is None:
        raise SystemExit("cri: update: nothing to update")
    c.update_container_resources(a.id, res)


def _size(text):
    """"COLSxROWS" -> (width, height), or None."""
    if not text:
        return None
    w, _, h = text.partition("x")
    if not (w.isdigit() and h.isdigit()):
        raise SystemExit("cri: --size must be COLSxROWS, e.g. 100x30, not %r" % text)
    return int(w), int(h)


def _exec_req(a):
    if not a.cmd:
        raise SystemExit("cri: %s: missing command after --" % a.command)
    return pb.ExecRequest(container_id=a.id, cmd=a.cmd, tty=a.tty, stdin=a.stdin,
                          stdout=True, stderr=not a.tty)


def _attach_req(a):
    return pb.AttachRequest(container_id=a.id, stdin=a.stdin, tty=a.tty, stdout=True, stderr=not a.tty)


def cmd_exec_url(c, a):
    print(c.exec(_exec_req(a)).url)


def cmd_attach_url(c, a):
    print(c.attach(_attach_req(a)).url)


def cmd_port_forward_url(c, a):
    print(c.port_forward(a.pod, [a.port]).url)


def cmd_exec(c, a):
    data = _payload(a.stdin_data, a.stdin_file)
    a.stdin = a.stdin or data is not None
    url = c.exec(_exec_req(a)).url
    status, timed_out = remote_command(url, data, sys.stdout.buffer, sys.stderr.buffer, a.timeout,
                                       _size(a.size))
    if timed_out:
        print("cri: Exec: timeout: no end of stream after %ss" % a.timeout, file=sys.stderr)
        return 124
    return exit_code_from_status(status)


def cmd_attach(c, a):
    data = _payload(a.stdin_data, a.stdin_file)
    a.stdin = a.stdin or data is not None
    url = c.attach(_attach_req(a)).url
    status, timed_out = remote_command(url, data, sys.stdout.buffer, sys.stderr.buffer, a.timeout,
                                       _size(a.size))
    # Attach runs until the container exits; a timeout is a normal way out.
    return 0 if timed_out else exit_code_from_status(status)


def cmd_pf_get(c, a):
    url = c.port_forward(a.pod, [a.port]).url
    try:
        data = port_forward_request(url, a.port, _payload(a.send, a.send_file) or b"", a.timeout)
    except PortForwardError as e:
        sys.stdout.buffer.write(e.data)
        sys.stdout.buffer.flush()
        raise
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def cmd_port_forward(c, a):
    try:
        serve_port_forward(c, a.pod, a.port, a.local_port, a.address, a.linger)
    except KeyboardInterrupt:
        return 0


def cmd_images(c, a):
    _print(c.list_images())


def cmd_image_status(c, a):
    _print(c.image_status(a.image, a.verbose))


def cmd_pull(c, a):
    print(c.pull_image(pb.ImageSpec(image=a.image)).image_ref)


def build_parser():
    p = argparse.ArgumentParser(
        prog="cri.py",
        description="Minimal CRI runtime.v1 client for husk tests. Results are printed as one "
                    "JSON line (proto field names, defaults included, 64-bit ints as strings); "
                    "IDs as plain lines. Errors: 'cri: <RPC>: <code>: <details>' on stderr, exit 1. "
                    "A command for the container goes after a literal '--'.",
        epilog="env: HUSK_CRI_SOCKET (default socket), HUSK_CRI_STATE (pod state dir, "
               "default /tmp/husk-cri-state), HUSK_CRI_GEN (protoc output cache).")
    p.add_argument("--socket", default=os.environ.get("HUSK_CRI_SOCKET", DEFAULT_SOCKET),
                   help="containerd socket (default %(default)s)")
    p.add_argument("--rpc-timeout", type=float, default=120.0, metavar="S",
                   help="gRPC deadline in seconds (default %(default)s)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name, fn, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn)
        return sp

    def kv(sp, flag, what):
        sp.add_argument(flag, action="append", default=[], metavar="K=V", help=what + " (repeatable)")

    def resources(sp):
        sp.add_argument("--memory", type=int, metavar="BYTES", help="memory limit")
        sp.add_argument("--cpu-quota", type=int, metavar="Q", help="CFS quota (us)")
        sp.add_argument("--cpu-period", type=int, metavar="P", help="CFS period (us)")
        sp.add_argument("--cpu-shares", type=int, metavar="N")
        sp.add_argument("--cpuset", metavar="CPUS", help="cpuset_cpus, e.g. 0-1")

    def stdin_opts(sp):
        sp.add_argument("--stdin-data", metavar="TEXT", help="send TEXT (backslash escapes allowed) on stdin")
        sp.add_argument("--stdin-file", metavar="PATH", help="send the file's bytes on stdin ('-' = our stdin)")
        sp.add_argument("--stdin", action="store_true", help="open stdin even without data")
        sp.add_argument("--tty", action="store_true")
        sp.add_argument("--timeout", type=float, default=0, metavar="S", help="give up after S seconds (0 = never)")
        sp.add_argument("--size", metavar="COLSxROWS", help="terminal size to send first (with --tty), e.g. 100x30")

    cmd("version", cmd_version, "Version RPC")
    sp = cmd("status", cmd_status, "runtime Status (conditions)")
    sp.add_argument("--verbose", action="store_true")

    sp = cmd("runp", cmd_runp, "RunPodSandbox; prints the pod id")
    sp.add_argument("--name", required=True)
    sp.add_argument("--uid", help="pod UID (default: random)")
    sp.add_argument("--namespace", default="default")
    sp.add_argument("--hostname")
    sp.add_argument("--log-dir", help="pod log directory on the host")
    sp.add_argument("--host-network", action="store_true")
    sp.add_argument("--host-pid", action="store_true")
    sp.add_argument("--host-ipc", action="store_true")
    sp.add_argument("--privileged", action="store_true", help="allow privileged containers in the pod")
    sp.add_argument("--share-pid", action="store_true", help="one PID namespace for the whole pod")
    sp.add_argument("--cgroup-parent")
    sp.add_argument("--dns-server", action="append", default=[], metavar="IP")
    sp.add_argument("--dns-search", action="append", default=[], metavar="DOMAIN")
    sp.add_argument("--dns-option", action="append", default=[], metavar="OPT")
    kv(sp, "--annotation", "pod annotation")
    kv(sp, "--label", "pod label")
    sp.add_argument("--runtime-handler", default="", help="e.g. kata or runc (default: containerd's default)")

    sp = cmd("create", cmd_create, "CreateContainer in POD (from `runp`); prints the container id. "
                                   "Usage: create POD --name N --image IMG [opts] [-- CMD ARGS...]")
    sp.add_argument("pod")
    sp.add_argument("--name", required=True)
    sp.add_argument("--image", required=True)
    sp.add_argument("--log-path", help="log file, relative to the pod's log dir")
    sp.add_argument("--mount", action="append", default=[], metavar="HOST:CTR[:ro]")
    resources(sp)
    sp.add_argument("--oom-score-adj", type=int)
    sp.add_argument("--privileged", action="store_true")
    sp.add_argument("--tty", action="store_true")
    sp.add_argument("--stdin", action="store_true")
    sp.add_argument("--workdir")
    kv(sp, "--env", "environment variable")
    kv(sp, "--annotation", "container annotation")
    kv(sp, "--label", "container label")

    for name, fn, what in (("start", cmd_start, "StartContainer"), ("rm", cmd_rm, "RemoveContainer"),
                           ("stopp", cmd_stopp, "StopPodSandbox"),
                           ("rmp", cmd_rmp, "RemovePodSandbox (also drops the pod state file)"),
                           ("stats", cmd_stats, "ContainerStats (JSON)")):
        cmd(name, fn, what).add_argument("id")
    sp = cmd("stop", cmd_stop, "StopContainer")
    sp.add_argument("id")
    sp.add_argument("--timeout", type=int, default=0, metavar="S", help="grace period before SIGKILL")
    sp = cmd("inspect", cmd_inspect, "ContainerStatus (JSON)")
    sp.add_argument("id")
    sp.add_argument("--verbose", action="store_true", help="include containerd's info map")
    sp = cmd("inspectp", cmd_inspectp, "PodSandboxStatus (JSON)")
    sp.add_argument("id")
    sp.add_argument("--verbose", action="store_true", help="include containerd's info map")
    sp = cmd("pods", cmd_pods, "ListPodSandbox (JSON)")
    sp.add_argument("--state", choices=sorted(_POD_STATES))
    kv(sp, "--label", "label selector")
    sp = cmd("ps", cmd_ps, "ListContainers (JSON), all states by default")
    sp.add_argument("--pod")
    sp.add_argument("--state", choices=sorted(_CTR_STATES))
    kv(sp, "--label", "label selector")
    sp = cmd("stats-all", cmd_stats_all, "ListContainerStats (JSON)")
    sp.add_argument("--pod")

    sp = cmd("exec-sync", cmd_exec_sync, "ExecSync: CMD's stdout/stderr go to ours, exit code is CMD's. "
                                         "Usage: exec-sync CID [--timeout S] -- CMD ARGS...")
    sp.add_argument("id")
    sp.add_argument("--timeout", type=int, default=0, metavar="S", help="exec timeout (0 = none)")

    sp = cmd("update", cmd_update, "UpdateContainerResources (only the given fields)")
    sp.add_argument("id")
    resources(sp)

    sp = cmd("exec-url", cmd_exec_url, "print the streaming URL of an Exec. Usage: exec-url CID [--tty] [--stdin] -- CMD...")
    sp.add_argument("id")
    sp.add_argument("--tty", action="store_true")
    sp.add_argument("--stdin", action="store_true")
    sp = cmd("attach-url", cmd_attach_url, "print the streaming URL of an Attach")
    sp.add_argument("id")
    sp.add_argument("--tty", action="store_true")
    sp.add_argument("--stdin", action="store_true")
    sp = cmd("port-forward-url", cmd_port_forward_url, "print the streaming URL of a PortForward")
    sp.add_argument("pod")
    sp.add_argument("port", type=int)

    sp = cmd("exec", cmd_exec, "Exec over the websocket stream; exits with CMD's exit code "
                               "(124 on --timeout). stdin is never closed, so CMD must not wait "
                               "for EOF. Usage: exec CID [opts] -- CMD ARGS...")
    sp.add_argument("id")
    stdin_opts(sp)
    sp = cmd("attach", cmd_attach, "Attach over the websocket stream; returns when the container "
                                   "exits or after --timeout (exit 0)")
    sp.add_argument("id")
    stdin_opts(sp)

    sp = cmd("pf-get", cmd_pf_get, "one port-forwarded exchange: send bytes to PORT in POD, print "
                                   "what comes back until the server closes or --timeout")
    sp.add_argument("pod")
    sp.add_argument("port", type=int)
    sp.add_argument("--send", metavar="TEXT", help="payload, backslash escapes allowed (e.g. '\\r\\n')")
    sp.add_argument("--send-file", metavar="PATH", help="payload from a file ('-' = our stdin)")
    sp.add_argument("--timeout", type=float, default=10.0, metavar="S")

    sp = cmd("port-forward", cmd_port_forward, "forward LOCAL_PORT on 127.0.0.1 to PORT in POD until "
                                               "killed (LOCAL_PORT 0 = pick one; printed on stdout)")
    sp.add_argument("pod")
    sp.add_argument("port", type=int)
    sp.add_argument("local_port", type=int)
    sp.add_argument("--address", default="127.0.0.1")
    sp.add_argument("--linger", type=float, default=10.0, metavar="S",
                    help="after the local side stops sending, close once the pod side is idle this long")

    cmd("images", cmd_images, "ListImages (JSON)")
    sp = cmd("image-status", cmd_image_status, "ImageStatus (JSON)")
    sp.add_argument("image")
    sp.add_argument("--verbose", action="store_true")
    sp = cmd("pull", cmd_pull, "PullImage; prints the image ref")
    sp.add_argument("image")
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is the container command.
    cmd = []
    if "--" in argv:
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1:]
    a = build_parser().parse_args(argv)
    a.cmd = cmd
    c = Cri(a.socket, timeout=a.rpc_timeout)
    try:
        return a.func(c, a) or 0
    except CriError as e:
        print("cri: %s" % e, file=sys.stderr)
        return 1
    except PortForwardError as e:
        print("cri: PortForward: error channel: %s" % e, file=sys.stderr)
        return 1
    except (StreamError, OSError, ValueError) as e:
        print("cri: %s: stream: %s" % (a.command, e), file=sys.stderr)
        return 1
    finally:
        c.close()


if __name__ == "__main__":
    sys.exit(main())
