// A small client of segsrv.v1.SegmentationService over @grpc/grpc-js, with the message types
// ts-proto generates from ../../proto at build time (src/gen, never committed).
import {
  credentials as grpcCredentials,
  type CallOptions,
  type ChannelCredentials,
  type ChannelOptions,
  Metadata,
  type ServiceError,
} from "@grpc/grpc-js";
import { Condition } from "./gen/segsrv/v1/condition";
import {
  AssignRequest,
  type AssignResponse,
  CountRequest,
  type CountResponse,
  DiscoverRequest,
  type DiscoverResponse,
  GetSnapshotInfoRequest,
  type GetSnapshotInfoResponse,
  PredictRequest,
  type PredictResponse,
  RelateDirection,
  RelateRequest,
  type RelateResponse,
  SegmentationServiceClient,
  type SnapshotSelector,
} from "./gen/segsrv/v1/segsrv";
import { SegsrvError } from "./errors";

/** Default deadline of every call, like the Python client's. */
export const DEFAULT_DEADLINE_MS = 10_000;
/** Default deadline of Discover: a search can take seconds on big data. */
export const DEFAULT_DISCOVER_DEADLINE_MS = 60_000;
/** Largest response accepted by default: the server's send limit (64 MiB). */
export const DEFAULT_MAX_RECEIVE_MESSAGE_BYTES = 64 * 1024 * 1024;
/** gRPC core's (grpcio's) default minimum interval between pings without data. */
export const GRPCIO_MIN_PING_INTERVAL_MS = 5 * 60 * 1000;

/**
 * The service config every client's channel gets: a call that fails with UNAVAILABLE (its server
 * process was killed, its connection reset, no snapshot loaded yet) is sent again, up to 5
 * attempts in all with a back-off from 100 ms doubling to 1 s, within the call's deadline. Every
 * segsrv method is read-only, so a retry is safe. It is
 * proto/segsrv/v1/segsrv_grpc_service_config.json, which the tests compare with this.
 */
export const SERVICE_CONFIG = {
  methodConfig: [
    {
      name: [{ service: "segsrv.v1.SegmentationService" }],
      retryPolicy: {
        maxAttempts: 5,
        initialBackoff: "0.1s",
        maxBackoff: "1s",
        backoffMultiplier: 2,
        retryableStatusCodes: ["UNAVAILABLE"],
      },
    },
  ],
};

export interface SegsrvClientOptions {
  /** Deadline of every call but Discover in milliseconds (default 10 s). */
  deadlineMs?: number;
  /** Deadline of Discover calls in milliseconds (default 60 s). */
  discoverDeadlineMs?: number;
  /** Snapshot name (empty: the one the server serves). */
  snapshot?: string;
  /** Snapshot version to pin (empty: the one served; another is FAILED_PRECONDITION). */
  version?: string;
  /** Channel credentials (default insecure: `segsrv serve` is plaintext). */
  credentials?: ChannelCredentials;
  /**
   * Keepalive ping interval while calls are in flight; off by default. At least 5 minutes
   * against a server with grpcio's defaults (see docs/clients.md), unless
   * serverMinPingIntervalMs says the server allows less.
   */
  keepaliveTimeMs?: number;
  /** The server's grpc.http2.min_ping_interval_without_data_ms if changed from 5 min. */
  serverMinPingIntervalMs?: number;
  /**
   * Also ping connections with no call in flight (default false): only against a server with
   * grpc.keepalive_permit_without_calls = 1 (grpcio's default counts such pings as strikes).
   */
  keepalivePermitWithoutCalls?: boolean;
  /**
   * Send calls that failed with UNAVAILABLE again, as SERVICE_CONFIG says (default true). A
   * "grpc.service_config" in channelOptions replaces the policy.
   */
  retry?: boolean;
  /** Extra grpc-js channel options (override the ones above). */
  channelOptions?: ChannelOptions;
}

type Unary<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => unknown;

/**
 * segsrv client: count, relate, snapshotInfo, predict, assign, discover; `withDeadline` gives a
 * view with another deadline (for every call) over the same channel; `close` closes the channel.
 * Failed calls reject with SegsrvError (code, details, violations, reason).
 */
export class SegsrvClient {
  private readonly stub: SegmentationServiceClient;
  private readonly ownsStub: boolean;
  readonly deadlineMs: number;
  readonly discoverDeadlineMs: number;
  private readonly snapshot: SnapshotSelector;

  constructor(target: string, options: SegsrvClientOptions = {}) {
    const channelOptions: ChannelOptions = {
      "grpc.max_receive_message_length": DEFAULT_MAX_RECEIVE_MESSAGE_BYTES,
    };
    if (options.retry ?? true) {
      channelOptions["grpc.service_config"] = JSON.stringify(SERVICE_CONFIG);
    } else {
      channelOptions["grpc.enable_retries"] = 0;
    }
    if (options.keepaliveTimeMs !== undefined) {
      const floor = options.serverMinPingIntervalMs ?? GRPCIO_MIN_PING_INTERVAL_MS;
      if (options.keepaliveTimeMs < floor) {
        throw new RangeError(
          `keepaliveTimeMs ${options.keepaliveTimeMs} is below the server's minimum ping interval ${floor} ms: ` +
            "a grpcio server answers such pings with GOAWAY too_many_pings",
        );
      }
      channelOptions["grpc.keepalive_time_ms"] = options.keepaliveTimeMs;
      channelOptions["grpc.keepalive_timeout_ms"] = 20_000;
      channelOptions["grpc.keepalive_permit_without_calls"] = options.keepalivePermitWithoutCalls ? 1 : 0;
    }
    Object.assign(channelOptions, options.channelOptions ?? {});
    this.stub = new SegmentationServiceClient(
      target,
      options.credentials ?? grpcCredentials.createInsecure(),
      channelOptions,
    );
    this.ownsStub = true;
    this.deadlineMs = checkDeadline(options.deadlineMs ?? DEFAULT_DEADLINE_MS);
    this.discoverDeadlineMs = checkDeadline(options.discoverDeadlineMs ?? DEFAULT_DISCOVER_DEADLINE_MS);
    this.snapshot = { name: options.snapshot ?? "", version: options.version ?? "" };
  }

  private static view(of: SegsrvClient, deadlineMs: number): SegsrvClient {
    const c = Object.create(SegsrvClient.prototype) as SegsrvClient;
    const ms = checkDeadline(deadlineMs);
    Object.assign(c, { stub: of.stub, ownsStub: false, deadlineMs: ms, discoverDeadlineMs: ms, snapshot: of.snapshot });
    return c;
  }

  /** The same client with another deadline for every call (Discover too), sharing (not owning) the channel. */
  withDeadline(deadlineMs: number): SegsrvClient {
    return SegsrvClient.view(this, deadlineMs);
  }

  /** Parses a condition in proto3 JSON (snake_case or lowerCamel field names). */
  static condition(json: unknown): Condition {
    const obj = typeof json === "string" ? JSON.parse(json) : json;
    return Condition.fromJSON(obj);
  }

  /** Rows of `universe` matching `condition` (undefined: every row). */
  count(universe: string, condition?: Condition): Promise<CountResponse>;
  /** Count with a full request. */
  count(request: Partial<CountRequest>): Promise<CountResponse>;
  count(a: string | Partial<CountRequest>, condition?: Condition): Promise<CountResponse> {
    const req = typeof a === "string" ? { universe: a, condition } : a;
    return this.unary(this.stub.count, CountRequest.fromPartial(this.withSnapshot(req)));
  }

  /** Features of `fields` (empty: every field) over- or under-indexed in `condition`. */
  relate(
    universe: string,
    condition: Condition | undefined,
    fields: string[],
    direction?: RelateDirection,
  ): Promise<RelateResponse>;
  /** Relate with a full request (order, limit, filters, plan). */
  relate(request: Partial<RelateRequest>): Promise<RelateResponse>;
  relate(
    a: string | Partial<RelateRequest>,
    condition?: Condition,
    fields: string[] = [],
    direction: RelateDirection = RelateDirection.RELATE_DIRECTION_UNSPECIFIED,
  ): Promise<RelateResponse> {
    const req = typeof a === "string" ? { universe: a, condition, fields, direction } : a;
    return this.unary(this.stub.relate, RelateRequest.fromPartial(this.withSnapshot(req)));
  }

  /** The snapshot's universes ("" for all), with every value and count if includeValues. */
  snapshotInfo(universe = "", includeValues = false): Promise<GetSnapshotInfoResponse> {
    const req = GetSnapshotInfoRequest.fromPartial(
      this.withSnapshot<Partial<GetSnapshotInfoRequest>>({ universe, includeValues }),
    );
    return this.unary(this.stub.getSnapshotInfo, req);
  }

  /** P(each value of targetField) for the row `id`, over every row as segment. */
  predict(universe: string, targetField: string, id: string): Promise<PredictResponse>;
  /** Predict with a full request (segment, evidence, method, ...). */
  predict(request: Partial<PredictRequest>): Promise<PredictResponse>;
  predict(a: string | Partial<PredictRequest>, targetField?: string, id?: string): Promise<PredictResponse> {
    const req = typeof a === "string" ? { universe: a, targetField, id } : a;
    return this.unary(this.stub.predict, PredictRequest.fromPartial(this.withSnapshot(req)));
  }

  /**
   * The catalog segments of each id, in order: unknown ids come back with found = false (they
   * never fail the batch); each found one lists every segment with member flag, size and share.
   */
  assign(universe: string, ids: string[], includePropensities?: boolean): Promise<AssignResponse>;
  /** Assign with a full request (e.g. `features` of a new customer instead of ids). */
  assign(request: Partial<AssignRequest>): Promise<AssignResponse>;
  assign(a: string | Partial<AssignRequest>, ids: string[] = [], includePropensities = false): Promise<AssignResponse> {
    const req = typeof a === "string" ? { universe: a, ids, includePropensities } : a;
    return this.unary(this.stub.assign, AssignRequest.fromPartial(this.withSnapshot(req)));
  }

  /**
   * Segments of the request's universe: without a `target`, conjunctions of features that co-occur
   * beyond what independence and every split of them predict; with one (e.g. `{ term: { field:
   * "churned", value: "true" } }`), conjunctions where its rate is high or low; with `k` > 0, also a
   * segmentation of k personas among them. Its deadline is `discoverDeadlineMs` (default 60 s; a
   * withDeadline view's own deadline otherwise).
   */
  discover(request: Partial<DiscoverRequest>): Promise<DiscoverResponse> {
    return this.unary(this.stub.discover, DiscoverRequest.fromPartial(this.withSnapshot(request)), this.discoverDeadlineMs);
  }

  /** Closes the channel (a withDeadline view leaves it open). */
  close(): void {
    if (this.ownsStub) this.stub.close();
  }

  private withSnapshot<T extends { snapshot?: SnapshotSelector | undefined }>(req: T): T {
    return req.snapshot === undefined ? { ...req, snapshot: this.snapshot } : req;
  }

  private unary<Req, Res>(method: Unary<Req, Res>, request: Req, deadlineMs = this.deadlineMs): Promise<Res> {
    const deadline = new Date(Date.now() + deadlineMs);
    return new Promise<Res>((resolve, reject) => {
      method.call(this.stub, request, new Metadata(), { deadline }, (err, res) => {
        if (err) reject(SegsrvError.fromServiceError(err));
        else resolve(res);
      });
    });
  }
}

function checkDeadline(ms: number): number {
  if (!(ms > 0)) throw new RangeError(`deadline must be positive: ${ms} ms`);
  return ms;
}
