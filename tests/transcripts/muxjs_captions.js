// mux.js's own caption pipeline on a transport stream (TS packets -> PES -> H.264 NAL units -> SEI ->
// CEA-608), as its transmuxer runs it; prints the cues as JSON: [{stream, startPts, endPts, rows}].
// Usage: node muxjs_captions.js <mux.js package dir> <file.ts>
const fs = require("fs");
const path = require("path");
const [muxRoot, file] = process.argv.slice(2);
const m2ts = require(path.join(muxRoot, "lib/m2ts/m2ts.js"));
const { H264Stream } = require(path.join(muxRoot, "lib/codecs/h264.js"));
const packets = new m2ts.TransportPacketStream();
const parse = new m2ts.TransportParseStream();
const elementary = new m2ts.ElementaryStream();
const rollover = new m2ts.TimestampRolloverStream("video");
const h264 = new H264Stream();
const captions = new m2ts.CaptionStream({ parse708captions: false });
const cues = [];
packets.pipe(parse).pipe(elementary);
elementary.pipe(rollover).pipe(h264);
h264.pipe(captions);
captions.on("data", (cue) => cues.push({
  stream: cue.stream, startPts: cue.startPts, endPts: cue.endPts, rows: cue.content.map((c) => c.text),
}));
packets.push(new Uint8Array(fs.readFileSync(file)));
packets.flush();
process.stdout.write(JSON.stringify(cues));
