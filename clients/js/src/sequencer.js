// Chat ordering, free of I/O: each `seq` delivered once, in order. Live messages pass
// through; during recovery (reconnected with `lastSeq`, until `recovered` — and, when that
// was truncated, until history pages fill the gap) everything is held, then released sorted.

export class Sequencer {
  constructor(lastSeq = null) {
    this.lastSeq = lastSeq;
    this.recovering = false;
    this.held = new Map(); // seq -> frame
  }

  oldestHeld() {
    let oldest = null;
    for (const seq of this.held.keys()) if (oldest === null || seq < oldest) oldest = seq;
    return oldest;
  }

  beginRecovery() {
    this.recovering = true;
  }

  /** A `message` frame arrived: the frames deliverable now. */
  push(frame) {
    const seq = frame.data.seq;
    if (this.lastSeq !== null && seq <= this.lastSeq) return [];
    if (this.recovering) {
      this.hold(frame);
      return [];
    }
    this.lastSeq = seq;
    return [frame];
  }

  hold(frame) {
    const seq = frame.data.seq;
    if ((this.lastSeq !== null && seq <= this.lastSeq) || this.held.has(seq)) return;
    this.held.set(seq, frame);
  }

  /** Release everything held, oldest first, and go live. */
  endRecovery() {
    this.recovering = false;
    const released = [...this.held.entries()].sort((a, b) => a[0] - b[0]);
    this.held.clear();
    const out = [];
    for (const [seq, frame] of released) {
      if (this.lastSeq === null || seq > this.lastSeq) {
        this.lastSeq = seq;
        out.push(frame);
      }
    }
    return out;
  }
}
