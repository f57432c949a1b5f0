package dev.segsrv.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import com.google.gson.Gson;
import dev.segsrv.v1.CountRequest;
import dev.segsrv.v1.CountResponse;
import dev.segsrv.v1.SegmentationServiceGrpc;
import io.grpc.Server;
import io.grpc.Status;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.DisplayName;
import org.junit.jupiter.api.Test;

/**
 * The retry policy against an in-process fake server whose Count fails a given number of times:
 * UNAVAILABLE is sent again (up to maxAttempts), other codes are not, and {@code retry(false)}
 * sends once. Needs no segsrv server.
 */
class RetryTest {
  private Server server;

  /** Count fails with {@code code} for the first {@code failures} attempts, then answers. */
  private static final class Flaky extends SegmentationServiceGrpc.SegmentationServiceImplBase {
    final AtomicInteger attempts = new AtomicInteger();
    final int failures;
    final Status code;

    Flaky(int failures, Status code) {
      this.failures = failures;
      this.code = code;
    }

    @Override
    public void count(CountRequest request, StreamObserver<CountResponse> out) {
      int n = attempts.incrementAndGet();
      if (n <= failures) {
        out.onError(code.withDescription("attempt " + n + " fails").asRuntimeException());
        return;
      }
      out.onNext(
          CountResponse.newBuilder()
              .setUniverse(request.getUniverse())
              .setRowCount(3000)
              .setCount(3000)
              .build());
      out.onCompleted();
    }
  }

  private String start(Flaky flaky) throws IOException {
    server =
        NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", 0))
            .addService(flaky)
            .build()
            .start();
    return "127.0.0.1:" + server.getPort();
  }

  @AfterEach
  void stop() throws InterruptedException {
    if (server != null) {
      server.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  @Test
  @DisplayName("retry: SERVICE_CONFIG is proto/segsrv/v1/segsrv_grpc_service_config.json")
  void serviceConfigIsTheContracts() throws IOException {
    String json =
        Files.readString(
            Path.of("..", "..", "proto", "segsrv", "v1", "segsrv_grpc_service_config.json"),
            StandardCharsets.UTF_8);
    assertEquals(new Gson().fromJson(json, Map.class), SegsrvClient.SERVICE_CONFIG);
  }

  @Test
  @DisplayName("retry: UNAVAILABLE is sent again, up to 5 attempts")
  void unavailableIsRetried() throws IOException {
    Flaky flaky = new Flaky(3, Status.UNAVAILABLE);
    try (SegsrvClient client = SegsrvClient.builder(start(flaky)).build()) {
      assertEquals(3000, client.count("customers", null).getRowCount());
    }
    assertEquals(4, flaky.attempts.get());
  }

  @Test
  @DisplayName("retry: stops after 5 attempts with UNAVAILABLE")
  void retriesStop() throws IOException {
    Flaky flaky = new Flaky(100, Status.UNAVAILABLE);
    try (SegsrvClient client = SegsrvClient.builder(start(flaky)).build()) {
      SegsrvException e =
          assertThrows(SegsrvException.class, () -> client.count("customers", null));
      assertEquals(Status.Code.UNAVAILABLE, e.code());
    }
    assertEquals(5, flaky.attempts.get());
  }

  @Test
  @DisplayName("retry: INVALID_ARGUMENT and RESOURCE_EXHAUSTED are not retried")
  void otherCodesAreNotRetried() throws IOException, InterruptedException {
    for (Status code : new Status[] {Status.INVALID_ARGUMENT, Status.RESOURCE_EXHAUSTED}) {
      Flaky flaky = new Flaky(1, code);
      try (SegsrvClient client = SegsrvClient.builder(start(flaky)).build()) {
        SegsrvException e =
            assertThrows(SegsrvException.class, () -> client.count("customers", null));
        assertEquals(code.getCode(), e.code());
      }
      assertEquals(1, flaky.attempts.get());
      stop();
    }
  }

  @Test
  @DisplayName("retry: retry(false) sends once")
  void retryOff() throws IOException {
    Flaky flaky = new Flaky(1, Status.UNAVAILABLE);
    try (SegsrvClient client = SegsrvClient.builder(start(flaky)).retry(false).build()) {
      SegsrvException e =
          assertThrows(SegsrvException.class, () -> client.count("customers", null));
      assertEquals(Status.Code.UNAVAILABLE, e.code());
    }
    assertEquals(1, flaky.attempts.get());
  }
}
