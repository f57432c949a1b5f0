package dev.segsrv.client;

import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.util.JsonFormat;
import dev.segsrv.v1.AssignRequest;
import dev.segsrv.v1.AssignResponse;
import dev.segsrv.v1.Condition;
import dev.segsrv.v1.CountRequest;
import dev.segsrv.v1.CountResponse;
import dev.segsrv.v1.DiscoverRequest;
import dev.segsrv.v1.DiscoverResponse;
import dev.segsrv.v1.GetSnapshotInfoRequest;
import dev.segsrv.v1.GetSnapshotInfoResponse;
import dev.segsrv.v1.PredictRequest;
import dev.segsrv.v1.PredictResponse;
import dev.segsrv.v1.RelateDirection;
import dev.segsrv.v1.RelateRequest;
import dev.segsrv.v1.RelateResponse;
import dev.segsrv.v1.SegmentationServiceGrpc;
import dev.segsrv.v1.SnapshotSelector;
import dev.segsrv.v1.Term;
import io.grpc.ManagedChannel;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.shaded.io.grpc.netty.NettyChannelBuilder;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;

/**
 * A small client of {@code segsrv.v1.SegmentationService}.
 *
 * <pre>{@code
 * try (SegsrvClient client = SegsrvClient.builder("127.0.0.1:50051").deadline(Duration.ofSeconds(5)).build()) {
 *   long n = client.count("customers", SegsrvClient.condition("{\"term\": {\"field\": \"churned\", \"value\": \"true\"}}")).getCount();
 * }
 * }</pre>
 *
 * <p>Every call carries a deadline (default 10 s, like the Python client; {@link
 * #discover(DiscoverRequest)} 60 s, as a search can take seconds); {@link
 * #withDeadline(Duration)} gives a view with another one for every call over the same channel.
 * A failed call throws {@link SegsrvException} with the status code, message, field violations
 * and ErrorInfo reason. Requests without a {@code snapshot} selector get the client's (snapshot
 * name and version; both empty by default, which the server accepts while it serves one
 * snapshot).
 *
 * <p>Keepalive is off by default (grpc-java's default). A segsrv server is a grpcio server with
 * gRPC core's defaults: it expects at most one ping every 5 minutes while no data flows, and
 * after two pings closer together closes the connection with GOAWAY ENHANCE_YOUR_CALM
 * ("too_many_pings"). {@link Builder#keepAliveTime(Duration)} therefore refuses less than 5
 * minutes unless {@link Builder#serverPermitsKeepAliveTime(Duration)} says the server was
 * configured to allow it, and pings are sent only while calls are in flight unless {@link
 * Builder#keepAliveWithoutCalls(boolean)} is set.
 */
public final class SegsrvClient implements AutoCloseable {
  /** Default deadline of every call. */
  public static final Duration DEFAULT_DEADLINE = Duration.ofSeconds(10);
  /** Default deadline of {@link #discover(DiscoverRequest)}: a search can take seconds on big data. */
  public static final Duration DEFAULT_DISCOVER_DEADLINE = Duration.ofSeconds(60);
  /** Largest response accepted: the server's default send limit (64 MiB). */
  public static final int DEFAULT_MAX_INBOUND_MESSAGE_BYTES = 64 * 1024 * 1024;
  /** gRPC core's (grpcio's) default GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS. */
  public static final Duration GRPCIO_MIN_PING_INTERVAL = Duration.ofMinutes(5);

  /**
   * The service config {@link Builder#build()} gives the channel: a call that fails with
   * UNAVAILABLE (its server process was killed, its connection reset, no snapshot loaded yet) is
   * sent again, up to 5 attempts in all with a back-off from 100 ms doubling to 1 s, within the
   * call's deadline. Every segsrv method is read-only, so a retry is safe. It is
   * proto/segsrv/v1/segsrv_grpc_service_config.json (numbers as Double, as grpc-java's
   * defaultServiceConfig expects), which the tests compare with this.
   */
  public static final Map<String, ?> SERVICE_CONFIG =
      Map.of(
          "methodConfig",
          List.of(
              Map.of(
                  "name", List.of(Map.of("service", "segsrv.v1.SegmentationService")),
                  "retryPolicy",
                      Map.of(
                          "maxAttempts", 5.0,
                          "initialBackoff", "0.1s",
                          "maxBackoff", "1s",
                          "backoffMultiplier", 2.0,
                          "retryableStatusCodes", List.of("UNAVAILABLE")))));

  private final ManagedChannel channel;
  private final boolean ownsChannel;
  private final Duration deadline;
  private final Duration discoverDeadline;
  private final SnapshotSelector snapshot;

  private SegsrvClient(
      ManagedChannel channel,
      boolean ownsChannel,
      Duration deadline,
      Duration discoverDeadline,
      SnapshotSelector snapshot) {
    this.channel = channel;
    this.ownsChannel = ownsChannel;
    this.deadline = deadline;
    this.discoverDeadline = discoverDeadline;
    this.snapshot = snapshot;
  }

  /** A client of {@code target} ("host:port") with the defaults. */
  public static SegsrvClient connect(String target) {
    return builder(target).build();
  }

  /** A builder for a client of {@code target} ("host:port" or any gRPC target URI). */
  public static Builder builder(String target) {
    return new Builder(target);
  }

  /**
   * A client over an existing channel, which the caller keeps owning ({@link #close()} leaves it
   * open). {@code deadline} is that of every call but Discover's ({@link
   * #DEFAULT_DISCOVER_DEADLINE}).
   */
  public static SegsrvClient overChannel(ManagedChannel channel, Duration deadline) {
    return new SegsrvClient(
        channel,
        false,
        checkDeadline(deadline),
        DEFAULT_DISCOVER_DEADLINE,
        SnapshotSelector.getDefaultInstance());
  }

  /**
   * The same client with another deadline for every call, Discover's included; shares (and does
   * not own) the channel.
   */
  public SegsrvClient withDeadline(Duration deadline) {
    Duration d = checkDeadline(deadline);
    return new SegsrvClient(channel, false, d, d, snapshot);
  }

  /** The deadline of each call but Discover. */
  public Duration deadline() {
    return deadline;
  }

  /** The deadline of each Discover call. */
  public Duration discoverDeadline() {
    return discoverDeadline;
  }

  /** The underlying channel. */
  public ManagedChannel channel() {
    return channel;
  }

  /** Parses a condition in its proto3 JSON form (field names as in the .proto or lowerCamel). */
  public static Condition condition(String json) {
    Condition.Builder b = Condition.newBuilder();
    try {
      JsonFormat.parser().merge(json, b);
    } catch (InvalidProtocolBufferException e) {
      throw new IllegalArgumentException("not a segsrv.v1.Condition in proto3 JSON: " + e.getMessage(), e);
    }
    return b.build();
  }

  /** The condition {@code field = value} (values as text: "true", "42", "25-35"). */
  public static Condition term(String field, String value) {
    return Condition.newBuilder()
        .setTerm(Term.newBuilder().setField(nullToEmpty(field)).setValue(nullToEmpty(value)))
        .build();
  }

  // ---- Count ----

  /** Rows of {@code universe} matching {@code condition} (null or unset: every row). */
  public CountResponse count(String universe, Condition condition) {
    CountRequest.Builder b = CountRequest.newBuilder().setUniverse(nullToEmpty(universe));
    if (condition != null) {
      b.setCondition(condition);
    }
    return count(b.build());
  }

  /** Count with a full request. */
  public CountResponse count(CountRequest request) {
    CountRequest r =
        request.hasSnapshot() ? request : request.toBuilder().setSnapshot(snapshot).build();
    return call(stub -> stub.count(r));
  }

  // ---- Relate ----

  /**
   * Features of {@code fields} (empty: every field) that over- or under-index in {@code
   * condition}, per {@code direction}.
   */
  public RelateResponse relate(
      String universe, Condition condition, List<String> fields, RelateDirection direction) {
    RelateRequest.Builder b =
        RelateRequest.newBuilder()
            .setUniverse(nullToEmpty(universe))
            .addAllFields(fields == null ? List.of() : fields)
            .setDirection(direction == null ? RelateDirection.RELATE_DIRECTION_UNSPECIFIED : direction);
    if (condition != null) {
      b.setCondition(condition);
    }
    return relate(b.build());
  }

  /** Relate with a full request (order, limit, filters, plan). */
  public RelateResponse relate(RelateRequest request) {
    RelateRequest r =
        request.hasSnapshot() ? request : request.toBuilder().setSnapshot(snapshot).build();
    return call(stub -> stub.relate(r));
  }

  // ---- GetSnapshotInfo ----

  /** Every universe of the snapshot, without the value lists. */
  public GetSnapshotInfoResponse snapshotInfo() {
    return snapshotInfo("", false);
  }

  /** One universe ("" for all), with every value and its count if {@code includeValues}. */
  public GetSnapshotInfoResponse snapshotInfo(String universe, boolean includeValues) {
    return snapshotInfo(
        GetSnapshotInfoRequest.newBuilder()
            .setUniverse(nullToEmpty(universe))
            .setIncludeValues(includeValues)
            .build());
  }

  /** GetSnapshotInfo with a full request. */
  public GetSnapshotInfoResponse snapshotInfo(GetSnapshotInfoRequest request) {
    GetSnapshotInfoRequest r =
        request.hasSnapshot() ? request : request.toBuilder().setSnapshot(snapshot).build();
    return call(stub -> stub.getSnapshotInfo(r));
  }

  // ---- Predict ----

  /** P(each value of {@code targetField}) for the row {@code id}, over every row as segment. */
  public PredictResponse predict(String universe, String targetField, String id) {
    return predict(
        PredictRequest.newBuilder()
            .setUniverse(nullToEmpty(universe))
            .setTargetField(nullToEmpty(targetField))
            .setId(nullToEmpty(id))
            .build());
  }

  /** Predict with a full request (segment, evidence, method, ...). */
  public PredictResponse predict(PredictRequest request) {
    PredictRequest r =
        request.hasSnapshot() ? request : request.toBuilder().setSnapshot(snapshot).build();
    return call(stub -> stub.predict(r));
  }

  // ---- Assign ----

  /**
   * The catalog segments of each id, in order: unknown ids come back with found = false (they
   * never fail the batch); each found one lists every segment with member flag, size and share.
   */
  public AssignResponse assign(String universe, List<String> ids, boolean includePropensities) {
    return assign(
        AssignRequest.newBuilder()
            .setUniverse(nullToEmpty(universe))
            .addAllIds(ids)
            .setIncludePropensities(includePropensities)
            .build());
  }

  /** Assign with a full request (e.g. the features of a new customer instead of ids). */
  public AssignResponse assign(AssignRequest request) {
    AssignRequest r =
        request.hasSnapshot() ? request : request.toBuilder().setSnapshot(snapshot).build();
    return call(stub -> stub.assign(r));
  }

  // ---- Discover ----

  /**
   * Segments of the request's universe: without a {@code target}, conjunctions of features that
   * co-occur beyond what independence and every split of them predict; with one (e.g. {@code
   * term("churned", "true")}), conjunctions where its rate is high or low; with {@code k > 0},
   * also a segmentation of k personas among them. Its deadline is {@link #discoverDeadline()}
   * (default 60 s; a {@link #withDeadline(Duration)} view's own deadline otherwise).
   */
  public DiscoverResponse discover(DiscoverRequest request) {
    DiscoverRequest r =
        request.hasSnapshot() ? request : request.toBuilder().setSnapshot(snapshot).build();
    return call(stub -> stub.discover(r), discoverDeadline);
  }

  // ---- plumbing ----

  private <T> T call(Function<SegmentationServiceGrpc.SegmentationServiceBlockingStub, T> rpc) {
    return call(rpc, deadline);
  }

  private <T> T call(
      Function<SegmentationServiceGrpc.SegmentationServiceBlockingStub, T> rpc, Duration deadline) {
    // The deadline is absolute once set, so each call gets a fresh stub.
    SegmentationServiceGrpc.SegmentationServiceBlockingStub stub =
        SegmentationServiceGrpc.newBlockingStub(channel)
            .withDeadlineAfter(deadline.toNanos(), TimeUnit.NANOSECONDS);
    try {
      return rpc.apply(stub);
    } catch (StatusRuntimeException e) {
      throw SegsrvException.from(e);
    }
  }

  /** Shuts the channel down (if this client owns it), waiting up to 5 s for calls in flight. */
  @Override
  public void close() {
    if (!ownsChannel) {
      return;
    }
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  private static String nullToEmpty(String s) {
    return s == null ? "" : s;
  }

  private static Duration checkDeadline(Duration d) {
    Objects.requireNonNull(d, "deadline");
    if (d.isNegative() || d.isZero()) {
      throw new IllegalArgumentException("deadline must be positive: " + d);
    }
    return d;
  }

  /** Builder of a {@link SegsrvClient} with its own Netty channel (plaintext unless {@link #useTls()}). */
  public static final class Builder {
    private final String target;
    private Duration deadline = DEFAULT_DEADLINE;
    private Duration discoverDeadline = DEFAULT_DISCOVER_DEADLINE;
    private String snapshotName = "";
    private String snapshotVersion = "";
    private boolean tls = false;
    private int maxInboundMessageBytes = DEFAULT_MAX_INBOUND_MESSAGE_BYTES;
    private Duration keepAliveTime = null;
    private Duration keepAliveTimeout = Duration.ofSeconds(20);
    private Duration serverMinPingInterval = GRPCIO_MIN_PING_INTERVAL;
    private boolean keepAliveWithoutCalls = false;
    private boolean retry = true;

    private Builder(String target) {
      this.target = Objects.requireNonNull(target, "target");
    }

    /** Deadline of every call but Discover (default 10 s). */
    public Builder deadline(Duration deadline) {
      this.deadline = checkDeadline(deadline);
      return this;
    }

    /** Deadline of Discover calls (default 60 s). */
    public Builder discoverDeadline(Duration deadline) {
      this.discoverDeadline = checkDeadline(deadline);
      return this;
    }

    /** Snapshot name to ask (empty: the one the server serves). */
    public Builder snapshot(String name) {
      this.snapshotName = nullToEmpty(name);
      return this;
    }

    /** Snapshot version to pin (empty: the one served; another is FAILED_PRECONDITION). */
    public Builder version(String version) {
      this.snapshotVersion = nullToEmpty(version);
      return this;
    }

    /** Use TLS (the server must be behind a TLS terminator; segsrv serve is plaintext). */
    public Builder useTls() {
      this.tls = true;
      return this;
    }

    /** Largest response accepted (default 64 MiB, the server's send limit). */
    public Builder maxInboundMessageBytes(int bytes) {
      this.maxInboundMessageBytes = bytes;
      return this;
    }

    /**
     * Send a keepalive ping after {@code time} without reads while calls are in flight. At least
     * 5 minutes against a server with grpcio's defaults (see the class comment).
     */
    public Builder keepAliveTime(Duration time) {
      this.keepAliveTime = time;
      return this;
    }

    /** How long a keepalive ping may go unanswered before the connection is closed (20 s). */
    public Builder keepAliveTimeout(Duration timeout) {
      this.keepAliveTimeout = timeout;
      return this;
    }

    /**
     * The server's {@code grpc.http2.min_ping_interval_without_data_ms} when it was changed
     * from grpcio's 5 minutes; lets {@link #keepAliveTime(Duration)} go down to it.
     */
    public Builder serverPermitsKeepAliveTime(Duration interval) {
      this.serverMinPingInterval = interval;
      return this;
    }

    /**
     * Also ping connections with no call in flight (default false). Only against a server that
     * sets {@code grpc.keepalive_permit_without_calls} = 1; grpcio's default counts such pings as
     * strikes.
     */
    public Builder keepAliveWithoutCalls(boolean enable) {
      this.keepAliveWithoutCalls = enable;
      return this;
    }

    /**
     * Send calls that failed with UNAVAILABLE again, as {@link #SERVICE_CONFIG} says (default
     * true). A service config from the name resolver takes precedence.
     */
    public Builder retry(boolean enable) {
      this.retry = enable;
      return this;
    }

    /** Builds the client and its channel (connecting lazily, on the first call). */
    public SegsrvClient build() {
      NettyChannelBuilder b =
          NettyChannelBuilder.forTarget(target).maxInboundMessageSize(maxInboundMessageBytes);
      if (tls) {
        b.useTransportSecurity();
      } else {
        b.usePlaintext();
      }
      if (retry) {
        b.defaultServiceConfig(SERVICE_CONFIG).enableRetry();
      } else {
        b.disableRetry();
      }
      if (keepAliveTime != null) {
        if (keepAliveTime.compareTo(serverMinPingInterval) < 0) {
          throw new IllegalArgumentException(
              "keepAliveTime "
                  + keepAliveTime
                  + " is below the server's minimum ping interval "
                  + serverMinPingInterval
                  + ": a grpcio server answers such pings with GOAWAY too_many_pings");
        }
        b.keepAliveTime(keepAliveTime.toNanos(), TimeUnit.NANOSECONDS)
            .keepAliveTimeout(keepAliveTimeout.toNanos(), TimeUnit.NANOSECONDS)
            .keepAliveWithoutCalls(keepAliveWithoutCalls);
      }
      SnapshotSelector selector =
          SnapshotSelector.newBuilder().setName(snapshotName).setVersion(snapshotVersion).build();
      return new SegsrvClient(b.build(), true, deadline, discoverDeadline, selector);
    }
  }
}
