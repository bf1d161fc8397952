// Atomic Guide realtime — the browser (and Node >= 20) client, one dependency-free ES module.
// Wire contract: docs/protocol.md. Usage: clients/js/README.md.
export { ChatWebSocketClient, MAX_HISTORY_PAGE } from "./chat.js";
export { AnalyticsWebSocketClient, METRICS } from "./analytics.js";
export { CollaborationDocument, CollaborationWebSocketClient } from "./collaboration.js";
export { Connection, endpointUrl, newRequestId } from "./connection.js";
export { Backoff, SlidingWindow, afterClose } from "./policy.js";
export { SharedDocument, Desync } from "./document.js";
export * as ot from "./ot.js";
export {
  AtomicGuideError,
  AuthError,
  ConnectionClosed,
  Disconnected,
  ForbiddenError,
  QueueFull,
  ReconnectFailed,
  ServerError,
  TooLargeError,
} from "./errors.js";
