package dev.segsrv.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.util.ArrayList;
import java.util.List;

/**
 * A failed call: the gRPC status code, its message and the {@code google.rpc} details the
 * server attaches (BadRequest field violations, ErrorInfo reason). The one exception type
 * {@link SegsrvClient} throws for server errors, like the Python client's SegsrvRpcError.
 */
public final class SegsrvException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  /** One field violation: the request path at fault and the full description. */
  public record Violation(String field, String description) {}

  private final Status.Code code;
  private final String statusMessage;
  private final List<Violation> violations;
  private final String reason;
  private final transient List<Any> details;

  private SegsrvException(
      Status.Code code,
      String statusMessage,
      List<Violation> violations,
      String reason,
      List<Any> details,
      Throwable cause) {
    super(code + ": " + statusMessage, cause);
    this.code = code;
    this.statusMessage = statusMessage;
    this.violations = List.copyOf(violations);
    this.reason = reason;
    this.details = List.copyOf(details);
  }

  /** Converts a gRPC failure, reading the rich status details when present. */
  public static SegsrvException from(StatusRuntimeException e) {
    Status status = e.getStatus();
    List<Violation> violations = new ArrayList<>();
    List<Any> details = new ArrayList<>();
    String reason = "";
    com.google.rpc.Status rich = StatusProto.fromThrowable(e);
    if (rich != null) {
      details.addAll(rich.getDetailsList());
      for (Any any : rich.getDetailsList()) {
        try {
          if (any.is(BadRequest.class)) {
            for (BadRequest.FieldViolation v : any.unpack(BadRequest.class).getFieldViolationsList()) {
              violations.add(new Violation(v.getField(), v.getDescription()));
            }
          } else if (any.is(ErrorInfo.class)) {
            reason = any.unpack(ErrorInfo.class).getReason();
          }
        } catch (InvalidProtocolBufferException ignored) {
          // A malformed detail: keep the raw Any in details().
        }
      }
    }
    String message = status.getDescription() == null ? "" : status.getDescription();
    return new SegsrvException(status.getCode(), message, violations, reason, details, e);
  }

  /** The gRPC status code (INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED, ...). */
  public Status.Code code() {
    return code;
  }

  /** The status message as the server wrote it. */
  public String statusMessage() {
    return statusMessage;
  }

  /** The BadRequest field violations, in order; empty when there are none. */
  public List<Violation> violations() {
    return violations;
  }

  /** The ErrorInfo reason (UNKNOWN_FIELD, NOT_BUILT_YET, ...); empty when there is none. */
  public String reason() {
    return reason;
  }

  /** The raw status details. */
  public List<Any> details() {
    return details;
  }
}
