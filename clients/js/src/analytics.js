// Analytics (/api/analytics/ws), for instructors and admins: live metric updates. The
// subscription is kept across reconnects (re-sent before anything else on a new socket).
import { Connection } from "./connection.js";

export const METRICS = Object.freeze(["activity", "engagement", "performance"]);

export class AnalyticsWebSocketClient extends Connection {
  static path = "/api/analytics/ws";

  constructor(options = {}) {
    super(options);
    this.metrics = new Set();
    this.values = new Map(); // metric -> latest value
  }

  /** Subscribe; resolves with `{metrics}`. A `metric_update` per metric follows at once. */
  subscribe(metrics = METRICS) {
    return this.send({ type: "subscribe", data: { metrics: [...metrics] } });
  }

  unsubscribe(metrics = METRICS) {
    return this.send({ type: "unsubscribe", data: { metrics: [...metrics] } });
  }

  onOpen() {
    // A reconnect (after the first socket): subscriptions were per socket; renew them.
    if (this.metrics.size) {
      this.request({ type: "subscribe", data: { metrics: [...this.metrics] } }, { scoped: true, counted: false }).catch(() => {});
    }
  }

  onFrame(frame) {
    // Tracked from the replies, so a raw send({type: "subscribe"}) is renewed too.
    if (frame.type === "subscribed") for (const metric of frame.data?.metrics ?? []) this.metrics.add(metric);
    if (frame.type === "unsubscribed") for (const metric of frame.data?.metrics ?? []) this.metrics.delete(metric);
    if (frame.type === "metric_update" && frame.data?.metric) this.values.set(frame.data.metric, frame.data.value);
    return [frame];
  }
}
