package plugin

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyctl/keyctl/core"
	pb "github.com/keyctl/keyctl/plugin/proto"
)

// This file is the one place where core's sentinel errors meet the wire.
// Provider errors travel as a pb.Error naming the sentinels they wrap;
// gRPC status codes carry only what happens around a call (transport
// failure, cancellation, deadline, unimplemented method), and map back to
// core.ErrUnavailable, context errors and core.ErrUnsupported.

// reasons pairs every sentinel that crosses the plugin boundary with its
// wire name. The names are part of protocol version 1.
var reasons = []struct {
	name string
	err  error
}{
	{"MALFORMED", core.ErrMalformed},
	{"UNSUPPORTED_VERSION", core.ErrUnsupportedVersion},
	{"UNKNOWN_ALGORITHM", core.ErrUnknownAlgorithm},
	{"UNWRAP_FAILED", core.ErrUnwrapFailed},
	{"DECRYPT_FAILED", core.ErrDecryptFailed},
	{"NO_PROVIDER", core.ErrNoProvider},
	{"KEY_NOT_FOUND", core.ErrKeyNotFound},
	{"KEY_DISABLED", core.ErrKeyDisabled},
	{"UNSUPPORTED", core.ErrUnsupported},
	{"UNAVAILABLE", core.ErrUnavailable},
	{"PERMISSION", core.ErrPermission},
	{"FAILED_PRECONDITION", core.ErrFailedPrecondition},
	{"CANCELED", context.Canceled},
	{"DEADLINE_EXCEEDED", context.DeadlineExceeded},
}

// toPB encodes a provider error for the wire; nil stays nil.
func toPB(err error) *pb.Error {
	if err == nil {
		return nil
	}
	e := &pb.Error{Message: err.Error()}
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			e.Reasons = append(e.Reasons, r.name)
		}
	}
	return e
}

// remoteError is a provider error received over the wire: its text is the
// provider's, and errors.Is finds the sentinels it named.
type remoteError struct {
	msg  string
	errs []error
}

func (e *remoteError) Error() string   { return e.msg }
func (e *remoteError) Unwrap() []error { return e.errs }

// fromPB decodes a provider error; nil stays nil. Unknown reasons (from a
// newer provider) are ignored: the message is kept.
func fromPB(e *pb.Error) error {
	if e == nil {
		return nil
	}
	re := &remoteError{msg: e.GetMessage()}
	for _, name := range e.GetReasons() {
		for _, r := range reasons {
			if r.name == name {
				re.errs = append(re.errs, r.err)
			}
		}
	}
	if re.msg == "" {
		re.msg = "provider error without a message"
		if len(re.errs) > 0 {
			re.msg = re.errs[0].Error()
		}
	}
	return re
}

// statusError maps the error of a gRPC call (not a provider error, which
// travels in the response) to core's terms, naming the provider.
func statusError(who string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w: %w", who, core.ErrUnavailable, err)
	}
	msg := strings.TrimSpace(st.Message())
	switch st.Code() {
	case codes.Canceled:
		return fmt.Errorf("%s: %s: %w", who, msg, context.Canceled)
	case codes.DeadlineExceeded:
		return fmt.Errorf("%s: %s: %w", who, msg, context.DeadlineExceeded)
	case codes.Unimplemented:
		return fmt.Errorf("%s: %s: %w", who, msg, core.ErrUnsupported)
	case codes.InvalidArgument, codes.OutOfRange:
		return fmt.Errorf("%s: %s: %w", who, msg, core.ErrMalformed)
	case codes.PermissionDenied, codes.Unauthenticated:
		return fmt.Errorf("%s: %s: %w", who, msg, core.ErrPermission)
	case codes.FailedPrecondition:
		return fmt.Errorf("%s: %s: %w", who, msg, core.ErrFailedPrecondition)
	case codes.NotFound:
		return fmt.Errorf("%s: %s: %w", who, msg, core.ErrKeyNotFound)
	default:
		return fmt.Errorf("%s: %s (%s): %w", who, msg, st.Code(), core.ErrUnavailable)
	}
}

// grpcStatus maps an error raised by the server around a call (not a
// provider error) to a gRPC status.
func grpcStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, core.ErrUnsupported):
		return status.Error(codes.Unimplemented, err.Error())
	case errors.Is(err, core.ErrMalformed):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, core.ErrPermission):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, core.ErrFailedPrecondition):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, core.ErrKeyNotFound):
		return status.Error(codes.NotFound, err.Error())
	default:
		return status.Error(codes.Unavailable, err.Error())
	}
}
