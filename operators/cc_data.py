"""Closed-caption bytes read from coded H.264 and HEVC packets, so that captions need no picture decoded.

US broadcast carries CEA-608/708 captions as ATSC A/53 ``cc_data`` in each access unit's SEI: a
user_data_registered_itu_t_t35 message (country 0xB5, provider 0x0031, user identifier "GA94", user data type
3). FFmpeg's H.264 and HEVC decoders copy those triplets to the frame they decode (A53 side data). Reading them
from the packets instead gives the same bytes (tests/operators/test_cc_data.py checks it, frame by frame, on
mux.js's captioned broadcast segments and on their re-encodings), and needs no decode: the decoder may then
skip every picture it does not sample (``decode.keyframes_only``, ``decode.skip_unsampled``) and still read
every frame's captions.

The packets come as Annex B byte streams (MPEG-TS, raw .h264/.hevc) or with length-prefixed NAL units (MP4,
Matroska, FLV), as the stream's extradata says (an avcC/hvcC record starts with version 1).
"""

from __future__ import annotations

from collections.abc import Iterator

_H264_SEI, _H264_VCL = 6, range(1, 6)  # NAL unit types: SEI; coded slices
_HEVC_PREFIX_SEI, _HEVC_VCL = 39, range(0, 32)
_USER_DATA_REGISTERED_ITU_T_T35 = 4
_COUNTRY_US, _PROVIDER_ATSC = 0xB5, 0x0031
_GA94, _CC_DATA = b"GA94", 3
_PROCESS_CC_DATA = 0x40


class CcDataReader:
    """The A53 cc_data triplets of one stream's packets; ``for_stream`` says whether its codec is covered."""

    def __init__(self, hevc: bool, length_size: int | None):
        self._hevc = hevc
        self._length_size = length_size  # None: Annex B start codes

    @classmethod
    def for_stream(cls, codec: str, extradata: bytes | None) -> CcDataReader | None:
        """A reader for the codec's packets, or None for a codec whose captions come only with decoded frames."""
        if codec not in ("h264", "hevc"):
            return None
        hevc = codec == "hevc"
        length_size = None
        if extradata and extradata[0] == 1:  # avcC / hvcC: NAL units behind big-endian lengths
            offset = 21 if hevc else 4  # lengthSizeMinusOne's byte in each record
            if len(extradata) <= offset:
                raise ValueError(f"{codec} extradata of {len(extradata)} bytes is too short for its NAL length size")
            length_size = (extradata[offset] & 3) + 1
        return cls(hevc, length_size)

    def read(self, packet: bytes) -> bytes:
        """The packet's cc_data triplets (3 bytes each) in the order its SEI messages carry them; b"" for none.
        An access unit's SEI precedes its first picture slice, so the scan stops there: the slices, nearly all
        of a packet's bytes, are never searched."""
        out = bytearray()
        for nal in self._nal_units(packet):
            if not nal:
                continue
            kind = (nal[0] >> 1) & 0x3F if self._hevc else nal[0] & 0x1F
            if kind in (_HEVC_VCL if self._hevc else _H264_VCL):
                break
            if kind == (_HEVC_PREFIX_SEI if self._hevc else _H264_SEI):
                out += _sei_cc_data(_rbsp(nal[2:] if self._hevc else nal[1:]))
        return bytes(out)

    def _nal_units(self, packet: bytes) -> Iterator[bytes]:
        if self._length_size is None:
            yield from _annex_b_units(packet)
            return
        size, i = self._length_size, 0
        while i + size <= len(packet):
            length = int.from_bytes(packet[i : i + size], "big")
            yield packet[i + size : i + size + length]
            i += size + length


def _annex_b_units(data: bytes) -> Iterator[bytes]:
    """NAL units between 00 00 01 start codes (a four-byte 00 00 00 01 leaves a trailing zero, dropped)."""
    start = data.find(b"\x00\x00\x01")
    while start >= 0:
        start += 3
        end = data.find(b"\x00\x00\x01", start)
        yield data[start:end].rstrip(b"\x00") if end >= 0 else data[start:]
        start = end


def _rbsp(payload: bytes) -> bytes:
    """The NAL payload without its emulation-prevention bytes (each 03 after 00 00). Scanning left to right and
    resuming after each removed byte is what the standard's zero counter does."""
    return payload.replace(b"\x00\x00\x03", b"\x00\x00")


def _sei_cc_data(rbsp: bytes) -> bytes:
    """The cc_data triplets of an SEI's A53 messages; a message cut short ends the SEI, as in FFmpeg."""
    out = bytearray()
    i = 0
    while i < len(rbsp) and rbsp[i:] != b"\x80":  # what is left is rbsp_trailing_bits
        kind, i = _sei_number(rbsp, i)
        size, i = _sei_number(rbsp, i)
        if kind is None or size is None or i + size > len(rbsp):
            break
        if kind == _USER_DATA_REGISTERED_ITU_T_T35:
            out += _a53_triplets(rbsp[i : i + size])
        i += size
    return bytes(out)


def _sei_number(data: bytes, i: int) -> tuple[int | None, int]:
    """An SEI payload type or size: 0xFF bytes adding 255 each, then the last byte."""
    value = 0
    while i < len(data) and data[i] == 0xFF:
        value += 255
        i += 1
    if i >= len(data):
        return None, i
    return value + data[i], i + 1


def _a53_triplets(t35: bytes) -> bytes:
    """cc_data triplets of an ATSC A/53 T.35 message (country, provider, "GA94", type 3); b"" for others."""
    if len(t35) < 10 or t35[0] != _COUNTRY_US or int.from_bytes(t35[1:3], "big") != _PROVIDER_ATSC:
        return b""
    if t35[3:7] != _GA94 or t35[7] != _CC_DATA or not t35[8] & _PROCESS_CC_DATA:
        return b""
    count = t35[8] & 0x1F  # then one reserved (em_data) byte, and the triplets
    return t35[10 : 10 + 3 * count] if len(t35) >= 10 + 3 * count else b""
