export { SegsrvClient, SERVICE_CONFIG, DEFAULT_DEADLINE_MS, DEFAULT_DISCOVER_DEADLINE_MS, DEFAULT_MAX_RECEIVE_MESSAGE_BYTES, GRPCIO_MIN_PING_INTERVAL_MS } from "./client";
export type { SegsrvClientOptions } from "./client";
export { SegsrvError } from "./errors";
export type { Violation, StatusDetail } from "./errors";
export { AllRows, Condition, ConditionList, NumericRange, SegmentReference, Term, ValueSet } from "./gen/segsrv/v1/condition";
export * from "./gen/segsrv/v1/segsrv";
