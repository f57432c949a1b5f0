// SegsrvError: a failed call with its google.rpc.Status details (BadRequest field violations,
// ErrorInfo reason), decoded from the `grpc-status-details-bin` trailer.
//
// The three google.rpc messages are tiny, so they are decoded here with the protobuf wire
// reader rather than generated from googleapis' .proto files (which this repository does not
// vendor).
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { status, type ServiceError } from "@grpc/grpc-js";

/** One BadRequest field violation: the request path at fault and the full description. */
export interface Violation {
  field: string;
  description: string;
}

/** A google.protobuf.Any detail of the status. */
export interface StatusDetail {
  typeUrl: string;
  value: Uint8Array;
}

const BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest";
const ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo";

/** A failed call: like the Python client's SegsrvRpcError. */
export class SegsrvError extends Error {
  /** The gRPC status code (grpc-js `status` enum). */
  readonly code: status;
  /** The code's name, e.g. "INVALID_ARGUMENT". */
  readonly codeName: string;
  /** The status message as the server wrote it. */
  readonly details: string;
  /** BadRequest field violations, in order. */
  readonly violations: Violation[];
  /** ErrorInfo reason (UNKNOWN_FIELD, NOT_BUILT_YET, ...); "" when there is none. */
  readonly reason: string;
  /** The raw status details. */
  readonly statusDetails: StatusDetail[];

  constructor(code: status, details: string, statusDetails: StatusDetail[] = [], options?: { cause?: unknown }) {
    const codeName = status[code] ?? String(code);
    super(`${codeName}: ${details}`, options);
    this.name = "SegsrvError";
    this.code = code;
    this.codeName = codeName;
    this.details = details;
    this.statusDetails = statusDetails;
    this.violations = [];
    this.reason = "";
    for (const d of statusDetails) {
      try {
        if (d.typeUrl === BAD_REQUEST) {
          this.violations.push(...decodeBadRequest(d.value));
        } else if (d.typeUrl === ERROR_INFO) {
          this.reason = decodeErrorInfoReason(d.value);
        }
      } catch {
        // a malformed detail: keep it raw in statusDetails
      }
    }
  }

  /** Converts a grpc-js ServiceError, reading the rich status from its trailers. */
  static fromServiceError(err: ServiceError): SegsrvError {
    let detailsList: StatusDetail[] = [];
    const bin = err.metadata?.get("grpc-status-details-bin") ?? [];
    if (bin.length > 0 && typeof bin[0] !== "string") {
      try {
        detailsList = decodeStatusDetails(bin[0] as Uint8Array);
      } catch {
        detailsList = [];
      }
    }
    return new SegsrvError(err.code, err.details ?? "", detailsList, { cause: err });
  }
}

/** google.rpc.Status: code = 1, message = 2, repeated google.protobuf.Any details = 3. */
function decodeStatusDetails(bytes: Uint8Array): StatusDetail[] {
  const out: StatusDetail[] = [];
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [field, wireType] = r.tag();
    if (field === 3 && wireType === 2) {
      out.push(decodeAny(r.bytes()));
    } else {
      r.skip(wireType);
    }
  }
  return out;
}

/** google.protobuf.Any: type_url = 1, value = 2. */
function decodeAny(bytes: Uint8Array): StatusDetail {
  const r = new BinaryReader(bytes);
  const any: StatusDetail = { typeUrl: "", value: new Uint8Array() };
  while (r.pos < r.len) {
    const [field, wireType] = r.tag();
    if (field === 1 && wireType === 2) any.typeUrl = r.string();
    else if (field === 2 && wireType === 2) any.value = r.bytes();
    else r.skip(wireType);
  }
  return any;
}

/** google.rpc.BadRequest: repeated FieldViolation field_violations = 1 (field = 1, description = 2). */
function decodeBadRequest(bytes: Uint8Array): Violation[] {
  const out: Violation[] = [];
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [field, wireType] = r.tag();
    if (field === 1 && wireType === 2) {
      const v: Violation = { field: "", description: "" };
      const vr = new BinaryReader(r.bytes());
      while (vr.pos < vr.len) {
        const [f, wt] = vr.tag();
        if (f === 1 && wt === 2) v.field = vr.string();
        else if (f === 2 && wt === 2) v.description = vr.string();
        else vr.skip(wt);
      }
      out.push(v);
    } else {
      r.skip(wireType);
    }
  }
  return out;
}

/** google.rpc.ErrorInfo: reason = 1, domain = 2, metadata = 3. */
function decodeErrorInfoReason(bytes: Uint8Array): string {
  const r = new BinaryReader(bytes);
  let reason = "";
  while (r.pos < r.len) {
    const [field, wireType] = r.tag();
    if (field === 1 && wireType === 2) reason = r.string();
    else r.skip(wireType);
  }
  return reason;
}
