package awskms

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"

	"github.com/keyctl/keyctl/core"
)

// Error is a failed KMS call. It wraps a core sentinel error (test with
// errors.Is: core.ErrUnwrapFailed, core.ErrKeyNotFound, core.ErrKeyDisabled,
// core.ErrPermission, core.ErrUnsupported, core.ErrUnavailable, ...) and the
// SDK's error, and its message names the operation and the key.
type Error struct {
	// Op is the KMS operation: "Encrypt", "Decrypt", "ReEncrypt", ...
	Op string
	// KeyID is the configured key id.
	KeyID string
	// Code is the KMS error code ("NotFoundException"), or "" for errors
	// that did not come from KMS (network, cancelled context).
	Code string
	// Attempts is how many requests were sent.
	Attempts int
	// Kind is the core sentinel error the failure maps to.
	Kind error
	// Err is the underlying error.
	Err error
	msg string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("awskms: %s with key %s: %v: %s", e.Op, e.KeyID, e.Kind, e.msg)
	if e.Attempts > 1 {
		s += fmt.Sprintf(" (after %d attempts)", e.Attempts)
	}
	return s
}

// Unwrap returns the sentinel and the underlying error.
func (e *Error) Unwrap() []error { return []error{e.Kind, e.Err} }

// call runs fn, retrying throttling and transient failures with exponential
// backoff and full jitter while attempts remain and the wait fits before
// ctx's deadline. A failure is returned as an *Error.
func (p *Provider) call(ctx context.Context, op string, fn func(context.Context) error) error {
	var err error
	attempt := 0
	for {
		if cerr := ctx.Err(); cerr != nil {
			if err == nil {
				err = cerr
			}
			return p.mapErr(op, attempt, err, cerr)
		}
		attempt++
		err = fn(ctx)
		if err == nil {
			return nil
		}
		if attempt >= p.retry.MaxAttempts || !retryable(err) {
			return p.mapErr(op, attempt, err, ctx.Err())
		}
		d := p.backoff(attempt)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
			return p.mapErr(op, attempt, err, nil)
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
}

func (p *Provider) backoff(attempt int) time.Duration {
	d := p.retry.BaseDelay << min(attempt-1, 20)
	if d > p.retry.MaxDelay || d <= 0 {
		d = p.retry.MaxDelay
	}
	if d <= 0 {
		return 0
	}
	return rand.N(d) + 1
}

// retryCodes are KMS error codes worth retrying besides the SDK's own list
// of throttling and transient errors.
var retryCodes = map[string]bool{
	"ThrottlingException":        true,
	"KMSInternalException":       true,
	"DependencyTimeoutException": true,
	"KeyUnavailableException":    true,
}

func retryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ae smithy.APIError
	if errors.As(err, &ae) && retryCodes[ae.ErrorCode()] {
		return true
	}
	return retry.IsErrorRetryables(retry.DefaultRetryables).IsErrorRetryable(err) == aws.TrueTernary
}

// mapErr turns an SDK error into an *Error naming op and the key. cerr is the
// caller's context error, if any.
func (p *Provider) mapErr(op string, attempts int, err, cerr error) error {
	e := &Error{Op: op, KeyID: p.cfg.KeyID, Attempts: attempts, Err: err}
	if cerr != nil {
		// The caller gave up: its context error is the cause (errors.Is
		// finds it); the last KMS failure, if any, goes in the message.
		e.Kind, e.Err, e.msg = core.ErrUnavailable, cerr, cerr.Error()
		if errors.Is(cerr, context.Canceled) {
			e.Kind, e.msg = context.Canceled, "the caller cancelled the request"
		}
		if !errors.Is(err, cerr) {
			e.msg += "; last error: " + err.Error()
		}
		return e
	}
	var ae smithy.APIError
	kmsMsg := ""
	if errors.As(err, &ae) {
		e.Code, kmsMsg = ae.ErrorCode(), ae.ErrorMessage()
	}
	status := 0
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	e.Kind, e.msg = classify(op, e.Code, status)
	if e.msg == "" {
		e.msg = err.Error()
	} else if e.Code != "" {
		e.msg += " (KMS " + e.Code
		if kmsMsg != "" {
			e.msg += ": " + kmsMsg
		}
		e.msg += ")"
	}
	return e
}

// classify maps a KMS error code (or HTTP status) to a core sentinel and a
// short explanation; an empty explanation means "use the SDK's message".
func classify(op, code string, status int) (error, string) {
	switch code {
	case "InvalidCiphertextException", "IncorrectKeyException":
		return core.ErrUnwrapFailed, "the ciphertext was altered, was made under another key, or the encryption context differs"
	case "NotFoundException":
		return core.ErrKeyNotFound, "the key or alias does not exist in this account and region"
	case "InvalidArnException":
		return core.ErrKeyNotFound, "the key id is not a valid KMS ARN"
	case "DisabledException":
		return core.ErrKeyDisabled, "the key is disabled"
	case "KMSInvalidStateException":
		return core.ErrKeyDisabled, "the key is not in a usable state (pending deletion, pending import, or unavailable)"
	case "AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
		"IncompleteSignature", "MissingAuthenticationToken", "InvalidClientTokenId",
		"ExpiredTokenException", "ExpiredToken", "InvalidGrantTokenException":
		return core.ErrPermission, "AWS refused the caller's credentials or the key policy does not allow " + op
	case "InvalidKeyUsageException":
		return core.ErrFailedPrecondition, "the key is not a symmetric ENCRYPT_DECRYPT key"
	case "UnsupportedOperationException":
		return core.ErrUnsupported, op + " is not supported for this key"
	case "ValidationException", "InvalidParameterValue", "InvalidParameterCombination", "SerializationException":
		return core.ErrMalformed, ""
	}
	if status == http.StatusNotImplemented {
		return core.ErrUnsupported, "the KMS endpoint does not implement " + op + " (HTTP 501)"
	}
	return core.ErrUnavailable, ""
}
