"""A GStreamer RTSP server (gst-rtsp-server, the reference RTSP server of GStreamer) serving one H.264 clip.

Run by the tests under the system python3 (python3-gi and gir1.2-gst-rtsp-server-1.0 from Debian), not
the project's venv: `python3 rtsp_server.py PORT MOUNT CLIP`. The clip is sent as it is, no re-encoding,
paced by the pipeline clock like a camera, over RTP/UDP or interleaved in the RTSP TCP connection,
whichever the client asks for. Prints "ready" once it listens.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

port, mount, clip = sys.argv[1], sys.argv[2], sys.argv[3]
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
# config-interval=-1: SPS/PPS before every keyframe, so a client that joins late can decode.
factory.set_launch(f"( filesrc location={clip} ! qtdemux ! h264parse config-interval=-1 "
                   f"! rtph264pay name=pay0 pt=96 config-interval=-1 )")
factory.set_shared(True)  # one media for every client, as a camera has
server.get_mount_points().add_factory(mount, factory)
if server.attach(None) == 0:
    sys.exit(f"cannot listen on port {port}")
print("ready", flush=True)
GLib.MainLoop().run()
