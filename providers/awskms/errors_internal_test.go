package awskms

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/aws/smithy-go"

	"github.com/keyctl/keyctl/core"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		code   string
		status int
		want   error
	}{
		{"InvalidCiphertextException", 400, core.ErrUnwrapFailed},
		{"IncorrectKeyException", 400, core.ErrUnwrapFailed},
		{"NotFoundException", 400, core.ErrKeyNotFound},
		{"InvalidArnException", 400, core.ErrKeyNotFound},
		{"DisabledException", 400, core.ErrKeyDisabled},
		{"KMSInvalidStateException", 400, core.ErrKeyDisabled},
		{"AccessDeniedException", 400, core.ErrPermission},
		{"UnrecognizedClientException", 400, core.ErrPermission},
		{"ExpiredTokenException", 400, core.ErrPermission},
		{"InvalidKeyUsageException", 400, core.ErrFailedPrecondition},
		{"UnsupportedOperationException", 400, core.ErrUnsupported},
		{"ValidationException", 400, core.ErrMalformed},
		{"", http.StatusNotImplemented, core.ErrUnsupported},
		{"UnknownError", http.StatusNotImplemented, core.ErrUnsupported},
		{"ThrottlingException", 400, core.ErrUnavailable},
		{"KMSInternalException", 500, core.ErrUnavailable},
		{"", 0, core.ErrUnavailable},
	}
	for _, tc := range tests {
		if got, _ := classify("Decrypt", tc.code, tc.status); got != tc.want {
			t.Errorf("classify(%q, %d) = %v, want %v", tc.code, tc.status, got, tc.want)
		}
	}
}

func TestRetryable(t *testing.T) {
	for code, want := range map[string]bool{
		"ThrottlingException":        true,
		"KMSInternalException":       true,
		"DependencyTimeoutException": true,
		"KeyUnavailableException":    true,
		"AccessDeniedException":      false,
		"InvalidCiphertextException": false,
		"NotFoundException":          false,
		"DisabledException":          false,
	} {
		err := &smithy.GenericAPIError{Code: code}
		if got := retryable(err); got != want {
			t.Errorf("retryable(%s) = %v, want %v", code, got, want)
		}
	}
	if retryable(context.Canceled) || retryable(context.DeadlineExceeded) {
		t.Error("context errors are retryable")
	}
}

func TestBackoff(t *testing.T) {
	p := &Provider{retry: RetryPolicy{MaxAttempts: 10, BaseDelay: 10 * time.Millisecond, MaxDelay: 100 * time.Millisecond}}
	for attempt := 1; attempt <= 70; attempt++ {
		cap := min(10*time.Millisecond<<min(attempt-1, 20), 100*time.Millisecond)
		for range 50 {
			if d := p.backoff(attempt); d <= 0 || d > cap {
				t.Fatalf("backoff(%d) = %v, want in (0, %v]", attempt, d, cap)
			}
		}
	}
	p.retry = RetryPolicy{MaxAttempts: 3}
	if d := p.backoff(1); d != 0 {
		t.Fatalf("backoff with zero delays = %v", d)
	}
}

func TestCallStopsOnInputErrors(t *testing.T) {
	p := &Provider{cfg: Config{KeyID: "alias/x"}, retry: RetryPolicy{MaxAttempts: 5, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}}
	n := 0
	err := p.call(context.Background(), "Decrypt", func(context.Context) error {
		n++
		return &smithy.GenericAPIError{Code: "InvalidCiphertextException"}
	})
	if n != 1 || !errors.Is(err, core.ErrUnwrapFailed) {
		t.Fatalf("%d attempts, %v", n, err)
	}
	n = 0
	err = p.call(context.Background(), "Decrypt", func(context.Context) error {
		n++
		if n < 3 {
			return &smithy.GenericAPIError{Code: "ThrottlingException"}
		}
		return nil
	})
	if n != 3 || err != nil {
		t.Fatalf("%d attempts, %v", n, err)
	}
}
