package dev.segsrv.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.segsrv.v1.CountRequest;
import dev.segsrv.v1.CountResponse;
import dev.segsrv.v1.DiscoverRequest;
import dev.segsrv.v1.DiscoverResponse;
import dev.segsrv.v1.SegmentationServiceGrpc;
import dev.segsrv.v1.SnapshotSelector;
import io.grpc.Context;
import io.grpc.Deadline;
import io.grpc.Server;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.time.Duration;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.DisplayName;
import org.junit.jupiter.api.Test;

/**
 * Discover's deadline and snapshot selector against an in-process fake server that records what
 * each call brought. Needs no segsrv server.
 */
class DiscoverDeadlineTest {
  private Server server;
  private Recorder recorder;
  private String target;

  /** Records the time left before each call's deadline (-1: none) and its snapshot selector. */
  private static final class Recorder extends SegmentationServiceGrpc.SegmentationServiceImplBase {
    volatile long leftMillis;
    volatile SnapshotSelector snapshot;

    private void record(SnapshotSelector s) {
      Deadline d = Context.current().getDeadline();
      leftMillis = d == null ? -1 : d.timeRemaining(TimeUnit.MILLISECONDS);
      snapshot = s;
    }

    @Override
    public void discover(DiscoverRequest request, StreamObserver<DiscoverResponse> out) {
      record(request.getSnapshot());
      out.onNext(DiscoverResponse.newBuilder().setUniverse(request.getUniverse()).build());
      out.onCompleted();
    }

    @Override
    public void count(CountRequest request, StreamObserver<CountResponse> out) {
      record(request.getSnapshot());
      out.onNext(CountResponse.newBuilder().setUniverse(request.getUniverse()).build());
      out.onCompleted();
    }
  }

  @BeforeEach
  void start() throws IOException {
    recorder = new Recorder();
    server =
        NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", 0))
            .addService(recorder)
            .build()
            .start();
    target = "127.0.0.1:" + server.getPort();
  }

  @AfterEach
  void stop() throws InterruptedException {
    server.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
  }

  private static final DiscoverRequest REQUEST =
      DiscoverRequest.newBuilder().setUniverse("customers").build();

  /** The call's deadline was {@code want} when it was sent: the time left is in (want - 5 s, want]. */
  private void assertDeadline(Duration want, String what) {
    long left = recorder.leftMillis;
    assertTrue(
        left > want.toMillis() - 5000 && left <= want.toMillis(),
        what + ": " + left + " ms left, want a deadline of " + want);
  }

  @Test
  @DisplayName("discover: the default deadline is DEFAULT_DISCOVER_DEADLINE (60 s), other calls keep theirs")
  void defaultDeadline() {
    try (SegsrvClient client = SegsrvClient.builder(target).deadline(Duration.ofSeconds(2)).build()) {
      assertEquals(Duration.ofSeconds(60), SegsrvClient.DEFAULT_DISCOVER_DEADLINE);
      assertEquals(SegsrvClient.DEFAULT_DISCOVER_DEADLINE, client.discoverDeadline());
      client.discover(REQUEST);
      assertDeadline(SegsrvClient.DEFAULT_DISCOVER_DEADLINE, "discover");
      client.count("customers", null);
      assertDeadline(Duration.ofSeconds(2), "count");
    }
  }

  @Test
  @DisplayName("discover: Builder.discoverDeadline sets it")
  void builderDiscoverDeadline() {
    try (SegsrvClient client =
        SegsrvClient.builder(target).discoverDeadline(Duration.ofSeconds(90)).build()) {
      client.discover(REQUEST);
      assertDeadline(Duration.ofSeconds(90), "discover");
    }
  }

  @Test
  @DisplayName("discover: a withDeadline view's deadline holds, shorter or longer")
  void withDeadline() {
    try (SegsrvClient client = SegsrvClient.builder(target).build()) {
      for (Duration d : new Duration[] {Duration.ofSeconds(3), Duration.ofMinutes(10)}) {
        client.withDeadline(d).discover(REQUEST);
        assertDeadline(d, "discover withDeadline(" + d + ")");
      }
    }
  }

  @Test
  @DisplayName("discover: a request without a snapshot gets the client's")
  void snapshotSelector() {
    try (SegsrvClient client =
        SegsrvClient.builder(target).snapshot("petnord").version("v1").build()) {
      client.discover(REQUEST);
      assertEquals("petnord", recorder.snapshot.getName());
      assertEquals("v1", recorder.snapshot.getVersion());
      client.discover(
          REQUEST.toBuilder().setSnapshot(SnapshotSelector.newBuilder().setName("other")).build());
      assertEquals("other", recorder.snapshot.getName());
      assertEquals("", recorder.snapshot.getVersion());
    }
  }
}
