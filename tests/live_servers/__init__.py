"""Real live-video servers for the tests, from Debian packages (deploy/install_system_packages.sh).

- `start_rtsp`: GStreamer's RTSP server (gst-rtsp-server) serving a clip as a camera does, run by the
  system python3 (python3-gi) from rtsp_server.py here; over TCP or UDP, as the client asks.
- `start_nginx`: nginx with its RTMP module: RTMP in and out, and an HLS live playlist of each stream
  served over HTTP.
- `push_rtmp`: the ffmpeg CLI pushing a clip to an RTMP URL in real time (-re), as a hardware encoder would.

Each is a process in its own group on free ports under a temp dir, a `deploy.processes.ProcessRecord`
that `stop()` ends (SIGTERM, then SIGKILL), so a test can kill and restart it mid-stream.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from deploy.processes import ProcessRecord, StackError, free_port, wait_for_port

HERE = Path(__file__).resolve().parent
SYSTEM_PYTHON = "/usr/bin/python3"  # python3-gi is installed for Debian's python, not the venv's


def _spawn(name: str, argv: list[str], log: Path, port: int | None, address: str) -> ProcessRecord:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    record = ProcessRecord(name=name, pid=proc.pid, port=port or 0, address=address, log=str(log))
    if port is not None:
        try:
            wait_for_port(port, 20, proc, log)
        except StackError:
            record.stop(timeout_s=2)
            raise
    return record


def start_rtsp(clip: Path, workdir: Path, port: int | None = None, mount: str = "/cam") -> ProcessRecord:
    """rtsp://127.0.0.1:PORT/cam serving ``clip`` (H.264 in MP4) from its start to each new session."""
    port = port or free_port()
    argv = [SYSTEM_PYTHON, str(HERE / "rtsp_server.py"), str(port), mount, str(clip)]
    return _spawn("rtsp", argv, workdir / "rtsp.log", port, f"rtsp://127.0.0.1:{port}{mount}")


@dataclass
class Nginx:
    record: ProcessRecord
    rtmp_port: int
    http_port: int

    def rtmp(self, name: str) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live/{name}"

    def hls(self, name: str) -> str:
        return f"http://127.0.0.1:{self.http_port}/hls/{name}.m3u8"

    def stop(self) -> None:
        self.record.stop()


_NGINX_CONF = """\
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 256; }}
rtmp {{
  server {{
    listen 127.0.0.1:{rtmp};
    application live {{ live on; hls on; hls_path {root}/hls; hls_fragment 1s; hls_playlist_length 30s; }}
  }}
}}
http {{
  access_log off;
  client_body_temp_path {root}/tmp; proxy_temp_path {root}/tmp; fastcgi_temp_path {root}/tmp;
  uwsgi_temp_path {root}/tmp; scgi_temp_path {root}/tmp;
  types {{ application/vnd.apple.mpegurl m3u8; video/mp2t ts; }}
  server {{
    listen 127.0.0.1:{http};
    location /hls/ {{ alias {root}/hls/; add_header Cache-Control no-cache; }}
  }}
}}
"""


def start_nginx(workdir: Path) -> Nginx:
    root = workdir / "nginx"
    (root / "hls").mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    rtmp, http = free_port(), free_port()
    conf = root / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(root=root, rtmp=rtmp, http=http))
    record = _spawn("nginx", ["nginx", "-p", str(root), "-c", str(conf)], root / "out.log", rtmp,
                    f"127.0.0.1:{rtmp}")
    wait_for_port(http, 10)
    return Nginx(record, rtmp, http)


def push_rtmp(clip: Path, url: str, workdir: Path, audio: bool = False) -> ProcessRecord:
    """ffmpeg sending ``clip``'s video (and with ``audio``, its first audio track) to ``url`` in real time,
    without re-encoding; it exits at the end."""
    tracks = ["-map", "0:v:0"] + (["-map", "0:a:0"] if audio else [])
    argv = ["ffmpeg", "-nostdin", "-loglevel", "warning", "-re", "-i", str(clip), *tracks, "-c", "copy",
            "-f", "flv", url]
    return _spawn("ffmpeg", argv, workdir / f"ffmpeg-{url.rsplit('/', 1)[-1]}.log", None, url)
