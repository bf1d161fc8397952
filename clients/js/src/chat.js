// Chat (/api/chat/ws): every message delivered once, in `seq` order, across reconnects.
// The client reconnects with lastSeq = the highest seq it delivered, holds what arrives
// until `recovered` and, when the server says the gap was too large (`truncated`), pages
// back through `history` until it is filled; then releases everything in order, and
// finally the `recovered` frame itself.
import { Connection } from "./connection.js";
import { AtomicGuideError } from "./errors.js";
import { Sequencer } from "./sequencer.js";

/** The server's largest history page. */
export const MAX_HISTORY_PAGE = 100;

export class ChatWebSocketClient extends Connection {
  static path = "/api/chat/ws";

  /** Options as Connection, plus `lastSeq` (resume after it) and `historyPageSize`. */
  constructor(options = {}) {
    super(options);
    const { lastSeq = null, historyPageSize = MAX_HISTORY_PAGE } = options;
    if (!(historyPageSize >= 1 && historyPageSize <= MAX_HISTORY_PAGE)) throw new RangeError(`historyPageSize must be 1-${MAX_HISTORY_PAGE}`);
    this.sequencer = new Sequencer(lastSeq);
    this.pageSize = historyPageSize;
    this.resumedFrom = null;
    this.gapFill = 0; // generation of the running gap fill; bumped to abandon it
  }

  /** The highest `seq` delivered so far (persist it to resume a later session). */
  get lastSeq() {
    return this.sequencer.lastSeq;
  }

  /** Post a message; resolves with `{messageId, seq}` once it is durably stored. */
  sendMessage(content, { messageType = "text", id } = {}) {
    return this.send({ type: "message", id, data: { content, messageType } });
  }

  /** The newest `limit` messages strictly before the cursors, oldest first: `{messages, hasMore}`. */
  history({ limit = 50, before, beforeSeq } = {}) {
    const data = { limit };
    if (before !== undefined) data.before = before;
    if (beforeSeq !== undefined) data.beforeSeq = beforeSeq;
    return this.send({ type: "history", data });
  }

  /** Show or clear the typing indicator (it lapses after a few seconds: repeat while typing). */
  typing(isTyping = true) {
    return this.sendNowait({ type: "typing", data: { isTyping } });
  }

  lastSeqParam() {
    this.resumedFrom = this.sequencer.lastSeq;
    return this.resumedFrom;
  }

  onOpen() {
    if (this.resumedFrom !== null) this.sequencer.beginRecovery();
  }

  onFrame(frame) {
    if (frame.type === "message" && typeof frame.data?.seq === "number") return this.sequencer.push(frame);
    if (frame.type === "recovered" && this.sequencer.recovering) {
      if (frame.data?.truncated) {
        this.fillGap(frame);
        return [];
      }
      return [...this.sequencer.endRecovery(), frame];
    }
    return [frame];
  }

  onDisconnect() {
    this.gapFill += 1; // the next connection recovers from lastSeq again
  }

  async fillGap(recovered) {
    const generation = ++this.gapFill;
    const floor = this.sequencer.lastSeq;
    let cursor = this.sequencer.oldestHeld() ?? undefined;
    try {
      for (;;) {
        const page = await this.history({ limit: this.pageSize, beforeSeq: cursor });
        if (generation !== this.gapFill) return;
        for (const message of page.messages) this.sequencer.hold({ type: "message", timestamp: message.timestamp, data: message });
        if (!page.messages.length || !page.hasMore) break;
        const oldest = page.messages[0].seq;
        if (floor !== null && oldest <= floor + 1) break;
        cursor = oldest;
      }
    } catch (err) {
      if (generation !== this.gapFill) return;
      // Deliver what we have rather than hold the room hostage; the gap stays.
      if (!(err instanceof AtomicGuideError)) throw err;
      this.logger.warn?.(`atomic-guide: could not fill the chat gap after ${floor}: ${err.message}`);
    }
    for (const frame of this.sequencer.endRecovery()) this.deliver(frame);
    this.deliver(recovered);
  }
}
