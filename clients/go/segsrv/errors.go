package segsrv

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Violation is one google.rpc.BadRequest field violation: Field is the path into the
// request (e.g. "condition.all_of.conditions[1].term.field"), Description says why.
type Violation struct {
	Field       string
	Description string
}

// Error is a failed call: the gRPC status code and message, the field violations and the
// google.rpc.ErrorInfo reason (e.g. "UNKNOWN_FIELD", "NOT_BUILT_YET") from the status
// details. status.Code(err) and status.FromError(err) work on it.
type Error struct {
	Code       codes.Code
	Message    string
	Reason     string
	Violations []Violation
	st         *status.Status
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "segsrv: %s: %s", e.Code, e.Message)
	for _, v := range e.Violations {
		fmt.Fprintf(&b, "; %s: %s", v.Field, v.Description)
	}
	return b.String()
}

// GRPCStatus makes status.FromError and status.Code see the original status.
func (e *Error) GRPCStatus() *status.Status { return e.st }

// AsError converts an error of a gRPC call to *Error (nil stays nil; an error that is not
// a gRPC status is returned unchanged).
func AsError(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	e := &Error{Code: st.Code(), Message: st.Message(), st: st}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.Violations = append(e.Violations, Violation{Field: v.GetField(), Description: v.GetDescription()})
			}
		case *errdetails.ErrorInfo:
			e.Reason = d.GetReason()
		}
	}
	return e
}

// Code is the gRPC status code of err (codes.OK for nil, codes.Unknown for a non-gRPC error).
func Code(err error) codes.Code { return status.Code(err) }
