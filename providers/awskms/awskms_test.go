package awskms_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/core/providertest"
	"github.com/keyctl/keyctl/providers/awskms"
	"github.com/keyctl/keyctl/providers/awskms/awskmstest"
	"github.com/keyctl/keyctl/providers/localfile"
)

func TestConformance(t *testing.T) {
	e := emulator(t)
	newP := func(t *testing.T) core.KeyProvider { return newProvider(t, e.Endpoint, e.CreateKey(t)) }
	providertest.Run(t, providertest.Harness{
		New:   newP,
		Other: newP,
		// KMS keeps key versions inside the key: the version a stanza
		// records is the key ARN, which rotation does not change, so the
		// suite's "rotation yields a new version" check does not apply
		// (and local-kms does not implement RotateKeyOnDemand). Rotation
		// is tested in TestRotation.
		NoRotation: true,
	})
}

func TestConformanceAlias(t *testing.T) {
	e := emulator(t)
	providertest.Run(t, providertest.Harness{
		New:        func(t *testing.T) core.KeyProvider { return newProvider(t, e.Endpoint, aliasA) },
		Other:      func(t *testing.T) core.KeyProvider { return newProvider(t, e.Endpoint, aliasB) },
		NoRotation: true,
	})
}

func TestConfigValidate(t *testing.T) {
	arn := "arn:aws:kms:eu-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	tests := []struct {
		name string
		cfg  awskms.Config
		ok   bool
	}{
		{"key id", awskms.Config{KeyID: "1234abcd-12ab-34cd-56ef-1234567890ab"}, true},
		{"key arn", awskms.Config{KeyID: arn, Region: "eu-west-2"}, true},
		{"alias", awskms.Config{KeyID: "alias/app", Profile: "prod"}, true},
		{"alias arn", awskms.Config{KeyID: "arn:aws:kms:us-east-1:111122223333:alias/app"}, true},
		{"gov partition", awskms.Config{KeyID: "arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/x"}, true},
		{"https endpoint", awskms.Config{KeyID: "alias/a", Endpoint: "https://vpce-1.kms.eu-west-2.vpce.amazonaws.com"}, true},
		{"http loopback", awskms.Config{KeyID: "alias/a", Endpoint: "http://127.0.0.1:4566"}, true},
		{"http localhost", awskms.Config{KeyID: "alias/a", Endpoint: "http://localhost:8080"}, true},
		{"http ipv6 loopback", awskms.Config{KeyID: "alias/a", Endpoint: "http://[::1]:8080"}, true},
		{"empty", awskms.Config{}, false},
		{"space in key", awskms.Config{KeyID: "alias/a b"}, false},
		{"newline in key", awskms.Config{KeyID: "alias/a\n"}, false},
		{"too long", awskms.Config{KeyID: "alias/" + strings.Repeat("a", 1100)}, false},
		{"not a kms arn", awskms.Config{KeyID: "arn:aws:s3:::bucket/key"}, false},
		{"arn without key", awskms.Config{KeyID: "arn:aws:kms:eu-west-2:111122223333:grant/x"}, false},
		{"bad region", awskms.Config{KeyID: "alias/a", Region: "EU West"}, false},
		{"bad profile", awskms.Config{KeyID: "alias/a", Profile: "a b"}, false},
		{"http remote", awskms.Config{KeyID: "alias/a", Endpoint: "http://kms.example.com"}, false},
		{"no scheme", awskms.Config{KeyID: "alias/a", Endpoint: "127.0.0.1:4566"}, false},
		{"ftp", awskms.Config{KeyID: "alias/a", Endpoint: "ftp://127.0.0.1"}, false},
		{"userinfo", awskms.Config{KeyID: "alias/a", Endpoint: "https://u:p@kms.example.com"}, false},
		{"query", awskms.Config{KeyID: "alias/a", Endpoint: "https://kms.example.com/?x=1"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.ok && err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if !tc.ok && !errors.Is(err, core.ErrMalformed) {
				t.Fatalf("Validate = %v, want an error wrapping ErrMalformed", err)
			}
			if !tc.ok {
				if _, err := awskms.New(context.Background(), tc.cfg); !errors.Is(err, core.ErrMalformed) {
					t.Fatalf("New = %v, want ErrMalformed", err)
				}
			}
		})
	}
}

func TestNewNeedsRegion(t *testing.T) {
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_PROFILE", "")
	_, err := awskms.New(context.Background(), awskms.Config{KeyID: "alias/a"})
	if !errors.Is(err, core.ErrMalformed) || !strings.Contains(err.Error(), "region") {
		t.Fatalf("New without a region = %v, want ErrMalformed naming the region", err)
	}
}

// TestDefaultCredentialChain builds the provider the way the CLI does, from
// Config alone, with credentials from the environment.
func TestDefaultCredentialChain(t *testing.T) {
	e := emulator(t)
	for _, kv := range e.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	p, err := awskms.New(context.Background(), awskms.Config{KeyID: aliasA, Endpoint: e.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	dek := mustDEK(t)
	s, err := p.WrapKey(context.Background(), dek, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.KeyVersion != awskmstest.KeyARN(keyA) {
		t.Fatalf("key version %q, want the ARN %q", s.KeyVersion, awskmstest.KeyARN(keyA))
	}
	unwrapEqual(t, p, s, nil, dek)
	if err := p.Health(context.Background()); err != nil {
		t.Fatalf("Health: %v", err)
	}
}

func mustDEK(t testing.TB) core.DEK {
	t.Helper()
	d, err := core.NewDEK()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func unwrapEqual(t testing.TB, p core.KeyProvider, s core.Stanza, ec core.Context, want core.DEK) {
	t.Helper()
	got, err := p.UnwrapKey(context.Background(), s, ec)
	if err != nil {
		t.Fatalf("UnwrapKey: %v", err)
	}
	if !got.Equal(want) {
		t.Fatal("UnwrapKey returned another DEK")
	}
}

func TestStanzaShape(t *testing.T) {
	e := emulator(t)
	for _, id := range []string{keyA, awskmstest.KeyARN(keyA), aliasA, "arn:aws:kms:" + awskmstest.Region + ":" + awskmstest.Account + ":" + aliasA} {
		t.Run(id, func(t *testing.T) {
			p := newProvider(t, e.Endpoint, id)
			ec := core.Context{"table": "users", "column": "email"}
			dek := mustDEK(t)
			s, err := p.WrapKey(context.Background(), dek, ec)
			if err != nil {
				t.Fatal(err)
			}
			want := core.Stanza{Provider: "awskms", KeyID: id, KeyVersion: awskmstest.KeyARN(keyA), Algorithm: core.AlgAWSKMS}
			if s.Provider != want.Provider || s.KeyID != want.KeyID || s.KeyVersion != want.KeyVersion || s.Algorithm != want.Algorithm {
				t.Fatalf("stanza %+v, want %+v", s, want)
			}
			if v, err := p.CurrentVersion(context.Background()); err != nil || v != want.KeyVersion {
				t.Fatalf("CurrentVersion = %q, %v", v, err)
			}
			unwrapEqual(t, p, s, ec, dek)
		})
	}
}

// TestEncryptionContextIsKMSContext checks that a wrap's context is the KMS
// EncryptionContext itself: a bare KMS Decrypt with the same map opens it.
func TestEncryptionContextIsKMSContext(t *testing.T) {
	e := emulator(t)
	p := newProvider(t, e.Endpoint, aliasA)
	ec := core.Context{"table": "users", "column": "email", "row": "42"}
	dek := mustDEK(t)
	s, err := p.WrapKey(context.Background(), dek, ec)
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.Client().Decrypt(context.Background(), &kms.DecryptInput{
		KeyId: aws.String(aliasA), CiphertextBlob: s.Data, EncryptionContext: ec,
	})
	if err != nil {
		t.Fatalf("bare Decrypt with the same EncryptionContext: %v", err)
	}
	if !core.DEK(out.Plaintext).Equal(dek) {
		t.Fatal("bare Decrypt returned another key")
	}
	if _, err := e.Client().Decrypt(context.Background(), &kms.DecryptInput{CiphertextBlob: s.Data}); err == nil {
		t.Fatal("bare Decrypt without the context succeeded")
	}
}

func TestEmptyContextValueRefused(t *testing.T) {
	e := emulator(t)
	px := newProxy(t, e)
	p := newProvider(t, px.URL, aliasA)
	_, err := p.WrapKey(context.Background(), mustDEK(t), core.Context{"table": ""})
	if !errors.Is(err, core.ErrMalformed) || !strings.Contains(err.Error(), `"table"`) {
		t.Fatalf("WrapKey with an empty value = %v, want ErrMalformed naming the key", err)
	}
	if _, _, err := p.GenerateDataKey(context.Background(), core.Context{"a": ""}); !errors.Is(err, core.ErrMalformed) {
		t.Fatalf("GenerateDataKey with an empty value = %v, want ErrMalformed", err)
	}
	if ops := px.ops(); len(ops) != 0 {
		t.Fatalf("KMS was called: %v", ops)
	}
}

// TestErrors covers each failure KMS reports, against the emulator (and a
// proxy in front of it for the answers local-kms never gives), and checks
// that the error wraps the right sentinel and names the key.
func TestErrors(t *testing.T) {
	e := emulator(t)
	ctx := context.Background()
	ec := core.Context{"table": "users"}

	// A disabled key: wrapped while enabled, then disabled.
	disabledARN := e.CreateKey(t)
	disabled := newProvider(t, e.Endpoint, disabledARN)
	dek := mustDEK(t)
	sDisabled, err := disabled.WrapKey(ctx, dek, ec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client().DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(disabledARN)}); err != nil {
		t.Fatal(err)
	}

	pA := newProvider(t, e.Endpoint, aliasA)
	sA, err := pA.WrapKey(ctx, dek, ec)
	if err != nil {
		t.Fatal(err)
	}
	tampered := sA
	tampered.Data = bytes.Clone(sA.Data)
	tampered.Data[len(tampered.Data)-3] ^= 0x40
	// A's wrap, relabelled as B's: Decrypt with B's key id must refuse it.
	pB := newProvider(t, e.Endpoint, aliasB)
	asB := sA
	asB.KeyID = aliasB
	asB.KeyVersion = awskmstest.KeyARN(keyB)

	missing := newProvider(t, e.Endpoint, "alias/keyctl-no-such-alias")
	missingKey := newProvider(t, e.Endpoint, awskmstest.NewKeyID())

	px := newProxy(t, e)
	px.setFault(func(op string, n int) (int, string, bool) {
		return http.StatusBadRequest, kmsError("AccessDeniedException", "User: arn:aws:iam::111122223333:user/x is not authorized to perform: kms:"+op), true
	})
	denied := newProvider(t, px.URL, aliasA)

	pxInvState := newProxy(t, e)
	pxInvState.setFault(func(op string, n int) (int, string, bool) {
		return http.StatusBadRequest, kmsError("KMSInvalidStateException", "key is pending deletion"), true
	})
	pending := newProvider(t, pxInvState.URL, aliasA)

	pxUsage := newProxy(t, e)
	pxUsage.setFault(func(op string, n int) (int, string, bool) {
		return http.StatusBadRequest, kmsError("InvalidKeyUsageException", "key usage is SIGN_VERIFY"), true
	})
	usage := newProvider(t, pxUsage.URL, aliasA)

	pxIncorrect := newProxy(t, e)
	pxIncorrect.setFault(func(op string, n int) (int, string, bool) {
		return http.StatusBadRequest, kmsError("IncorrectKeyException", "The key ID in the request does not identify a CMK that can perform this operation."), true
	})
	incorrect := newProvider(t, pxIncorrect.URL, aliasA)

	unreachable := newProvider(t, "http://127.0.0.1:1", aliasA,
		awskms.WithRetryPolicy(awskms.RetryPolicy{MaxAttempts: 2, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}))

	tests := []struct {
		name string
		key  string
		call func() error
		want error
	}{
		{"wrap: alias not found", "alias/keyctl-no-such-alias", func() error { _, err := missing.WrapKey(ctx, dek, ec); return err }, core.ErrKeyNotFound},
		{"wrap: key not found", missingKey.Ref().KeyID, func() error { _, err := missingKey.WrapKey(ctx, dek, ec); return err }, core.ErrKeyNotFound},
		{"health: key not found", missingKey.Ref().KeyID, func() error { return missingKey.Health(ctx) }, core.ErrKeyNotFound},
		{"unwrap: key not found", "alias/keyctl-no-such-alias", func() error {
			s := sA
			s.KeyID = "alias/keyctl-no-such-alias"
			_, err := missing.UnwrapKey(ctx, s, ec)
			return err
		}, core.ErrKeyNotFound},
		{"wrap: disabled", disabledARN, func() error { _, err := disabled.WrapKey(ctx, dek, ec); return err }, core.ErrKeyDisabled},
		{"unwrap: disabled", disabledARN, func() error { _, err := disabled.UnwrapKey(ctx, sDisabled, ec); return err }, core.ErrKeyDisabled},
		{"generate: disabled", disabledARN, func() error { _, _, err := disabled.GenerateDataKey(ctx, ec); return err }, core.ErrKeyDisabled},
		{"health: disabled", disabledARN, func() error { return disabled.Health(ctx) }, core.ErrKeyDisabled},
		{"unwrap: invalid ciphertext", aliasA, func() error { _, err := pA.UnwrapKey(ctx, tampered, ec); return err }, core.ErrUnwrapFailed},
		{"unwrap: wrong context", aliasA, func() error {
			_, err := pA.UnwrapKey(ctx, sA, core.Context{"table": "orders"})
			return err
		}, core.ErrUnwrapFailed},
		{"unwrap: no context", aliasA, func() error { _, err := pA.UnwrapKey(ctx, sA, nil); return err }, core.ErrUnwrapFailed},
		{"unwrap: other key", aliasB, func() error { _, err := pB.UnwrapKey(ctx, asB, ec); return err }, core.ErrUnwrapFailed},
		{"import: wrong context", aliasA, func() error {
			_, err := pA.ImportCiphertext(ctx, sA.Data, core.Context{"x": "y"})
			return err
		}, core.ErrUnwrapFailed},
		{"rewrap: wrong context", aliasA, func() error { _, err := pA.RewrapKey(ctx, sA, core.Context{"x": "y"}); return err }, core.ErrUnwrapFailed},
		{"unwrap: incorrect key", aliasA, func() error { _, err := incorrect.UnwrapKey(ctx, sA, ec); return err }, core.ErrUnwrapFailed},
		{"wrap: access denied", aliasA, func() error { _, err := denied.WrapKey(ctx, dek, ec); return err }, core.ErrPermission},
		{"unwrap: access denied", aliasA, func() error { _, err := denied.UnwrapKey(ctx, sA, ec); return err }, core.ErrPermission},
		{"health: access denied", aliasA, func() error { return denied.Health(ctx) }, core.ErrPermission},
		{"wrap: pending deletion", aliasA, func() error { _, err := pending.WrapKey(ctx, dek, ec); return err }, core.ErrKeyDisabled},
		{"wrap: wrong key usage", aliasA, func() error { _, err := usage.WrapKey(ctx, dek, ec); return err }, core.ErrFailedPrecondition},
		{"wrap: unreachable", aliasA, func() error { _, err := unreachable.WrapKey(ctx, dek, ec); return err }, core.ErrUnavailable},
		{"unwrap: unreachable", aliasA, func() error { _, err := unreachable.UnwrapKey(ctx, sA, ec); return err }, core.ErrUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want one wrapping %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("error %q does not name the key %s", err, tc.key)
			}
			if core.IsInputError(err) != core.IsInputError(tc.want) {
				t.Fatalf("IsInputError(%v) = %v", err, core.IsInputError(err))
			}
		})
	}

	// The SDK's error stays reachable, with the KMS code, and KMS's own
	// message (which names the principal and the action) is kept.
	_, err = denied.WrapKey(ctx, dek, ec)
	if !strings.Contains(err.Error(), "is not authorized to perform: kms:Encrypt") {
		t.Fatalf("error %q lost the KMS message", err)
	}
	var ke *awskms.Error
	if !errors.As(err, &ke) || ke.Code != "AccessDeniedException" || ke.Op != "Encrypt" || ke.KeyID != aliasA {
		t.Fatalf("errors.As *awskms.Error: %#v", ke)
	}
}

func TestStanzaRefusals(t *testing.T) {
	e := emulator(t)
	p := newProvider(t, e.Endpoint, aliasA)
	ctx := context.Background()
	dek := mustDEK(t)
	s, err := p.WrapKey(ctx, dek, nil)
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(*core.Stanza)) core.Stanza { c := s; c.Data = bytes.Clone(s.Data); f(&c); return c }
	tests := []struct {
		name string
		s    core.Stanza
		want error
	}{
		{"other provider", mod(func(s *core.Stanza) { s.Provider = "localfile" }), core.ErrNoProvider},
		{"other key id", mod(func(s *core.Stanza) { s.KeyID = keyA }), core.ErrNoProvider},
		{"other algorithm", mod(func(s *core.Stanza) { s.Algorithm = core.AlgAES256GCM }), core.ErrUnknownAlgorithm},
		{"empty data", mod(func(s *core.Stanza) { s.Data = nil }), core.ErrMalformed},
		{"huge data", mod(func(s *core.Stanza) { s.Data = make([]byte, 7000) }), core.ErrMalformed},
		{"other version", mod(func(s *core.Stanza) { s.KeyVersion = awskmstest.KeyARN(keyB) }), core.ErrUnwrapFailed},
		{"no version", mod(func(s *core.Stanza) { s.KeyVersion = "" }), core.ErrUnwrapFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := p.UnwrapKey(ctx, tc.s, nil); !errors.Is(err, tc.want) {
				t.Fatalf("UnwrapKey = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestRetry(t *testing.T) {
	e := emulator(t)
	ctx := context.Background()
	px := newProxy(t, e)
	throttleFirst := func(k int) func(string, int) (int, string, bool) {
		return func(op string, n int) (int, string, bool) {
			if n <= k {
				return http.StatusBadRequest, kmsError("ThrottlingException", "Rate exceeded"), true
			}
			return 0, "", false
		}
	}
	policy := awskms.RetryPolicy{MaxAttempts: 4, BaseDelay: 5 * time.Millisecond, MaxDelay: 20 * time.Millisecond}
	p := newProvider(t, px.URL, aliasA, awskms.WithRetryPolicy(policy))
	dek := mustDEK(t)

	t.Run("throttled then served", func(t *testing.T) {
		px.reset()
		px.setFault(throttleFirst(3))
		s, err := p.WrapKey(ctx, dek, nil)
		if err != nil {
			t.Fatalf("WrapKey after 3 throttled attempts: %v", err)
		}
		if got := px.ops(); !slices.Equal(got, []string{"Encrypt", "Encrypt", "Encrypt", "Encrypt"}) {
			t.Fatalf("requests %v, want 4 Encrypt", got)
		}
		px.setFault(nil)
		unwrapEqual(t, p, s, nil, dek)
	})
	t.Run("transient 503 then served", func(t *testing.T) {
		px.reset()
		px.setFault(func(op string, n int) (int, string, bool) {
			if n == 1 {
				return http.StatusServiceUnavailable, kmsError("KMSInternalException", "internal"), true
			}
			return 0, "", false
		})
		if _, err := p.WrapKey(ctx, dek, nil); err != nil {
			t.Fatalf("WrapKey after one 503: %v", err)
		}
	})
	t.Run("attempts exhausted", func(t *testing.T) {
		px.reset()
		px.setFault(throttleFirst(100))
		_, err := p.WrapKey(ctx, dek, nil)
		var ke *awskms.Error
		if !errors.Is(err, core.ErrUnavailable) || !errors.As(err, &ke) || ke.Attempts != 4 || ke.Code != "ThrottlingException" {
			t.Fatalf("WrapKey = %v, want ErrUnavailable after 4 attempts", err)
		}
		if !strings.Contains(err.Error(), "after 4 attempts") {
			t.Fatalf("error %q does not say how often it tried", err)
		}
	})
	t.Run("not retried", func(t *testing.T) {
		px.reset()
		px.setFault(func(op string, n int) (int, string, bool) {
			return http.StatusBadRequest, kmsError("AccessDeniedException", "no"), true
		})
		if _, err := p.WrapKey(ctx, dek, nil); !errors.Is(err, core.ErrPermission) {
			t.Fatal(err)
		}
		if n := len(px.ops()); n != 1 {
			t.Fatalf("AccessDenied was sent %d times, want 1", n)
		}
	})
	t.Run("within the deadline", func(t *testing.T) {
		slow := newProvider(t, px.URL, aliasA, awskms.WithRetryPolicy(awskms.RetryPolicy{MaxAttempts: 10, BaseDelay: time.Second, MaxDelay: time.Second}))
		px.reset()
		px.setFault(throttleFirst(100))
		start := time.Now()
		_, err := slow.WrapKey(ctxTimeout(t, 300*time.Millisecond), dek, nil)
		if !errors.Is(err, core.ErrUnavailable) {
			t.Fatalf("WrapKey = %v, want ErrUnavailable", err)
		}
		if d := time.Since(start); d > 1200*time.Millisecond {
			t.Fatalf("WrapKey took %v past a 300ms deadline", d)
		}
	})
	t.Run("cancelled while waiting", func(t *testing.T) {
		slow := newProvider(t, px.URL, aliasA, awskms.WithRetryPolicy(awskms.RetryPolicy{MaxAttempts: 10, BaseDelay: 5 * time.Second, MaxDelay: 5 * time.Second}))
		px.reset()
		px.setFault(throttleFirst(100))
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		start := time.Now()
		_, err := slow.WrapKey(ctx, dek, nil)
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "ThrottlingException") {
			t.Fatalf("WrapKey = %v, want context.Canceled mentioning the last error", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("cancel took %v", d)
		}
	})
}

func TestGenerateDataKey(t *testing.T) {
	e := emulator(t)
	p := newProvider(t, e.Endpoint, aliasA)
	ec := core.Context{"app": "billing"}
	dek, s, err := p.GenerateDataKey(context.Background(), ec)
	if err != nil {
		t.Fatal(err)
	}
	if s.KeyVersion != awskmstest.KeyARN(keyA) || s.Algorithm != core.AlgAWSKMS {
		t.Fatalf("stanza %+v", s)
	}
	unwrapEqual(t, p, s, ec, dek)
	if _, err := p.UnwrapKey(context.Background(), s, nil); !errors.Is(err, core.ErrUnwrapFailed) {
		t.Fatalf("UnwrapKey without the context: %v", err)
	}
}

// TestRewrapKeyStaysInKMS moves a wrap from key A to key B with ReEncrypt
// and checks that the only KMS call was ReEncrypt (no Decrypt: the DEK did
// not leave KMS).
func TestRewrapKeyStaysInKMS(t *testing.T) {
	e := emulator(t)
	ctx := context.Background()
	ec := core.Context{"table": "users"}
	pA := newProvider(t, e.Endpoint, aliasA)
	dek := mustDEK(t)
	src, err := pA.WrapKey(ctx, dek, ec)
	if err != nil {
		t.Fatal(err)
	}
	px := newProxy(t, e)
	pB := newProvider(t, px.URL, aliasB)
	dst, err := pB.RewrapKey(ctx, src, ec)
	if err != nil {
		t.Fatalf("RewrapKey: %v", err)
	}
	if got := px.ops(); !slices.Equal(got, []string{"ReEncrypt"}) {
		t.Fatalf("KMS calls %v, want only ReEncrypt", got)
	}
	if dst.KeyID != aliasB || dst.KeyVersion != awskmstest.KeyARN(keyB) {
		t.Fatalf("rewrapped stanza at %s version %s", dst.Ref(), dst.KeyVersion)
	}
	unwrapEqual(t, pB, dst, ec, dek)
	if _, err := pA.UnwrapKey(ctx, dst, ec); !errors.Is(err, core.ErrNoProvider) {
		t.Fatalf("A opening B's stanza: %v", err)
	}

	// A stanza of another provider type: the caller must unwrap and wrap.
	_, err = pB.RewrapKey(ctx, core.Stanza{Provider: "localfile", KeyID: "k", KeyVersion: "1", Algorithm: core.AlgAES256GCM, Data: []byte{1}}, ec)
	if !errors.Is(err, core.ErrUnsupported) || !errors.Is(err, core.ErrNoProvider) {
		t.Fatalf("RewrapKey of a localfile stanza = %v, want ErrUnsupported and ErrNoProvider", err)
	}
	// A source key that does not exist: unsupported from inside KMS.
	ghost := src
	ghost.KeyID = "alias/keyctl-no-such-alias"
	px.setFault(func(op string, n int) (int, string, bool) {
		return http.StatusBadRequest, kmsError("AccessDeniedException", "not authorized to perform kms:ReEncryptFrom"), true
	})
	if _, err := pB.RewrapKey(ctx, ghost, ec); !errors.Is(err, core.ErrUnsupported) || !errors.Is(err, core.ErrPermission) {
		t.Fatalf("RewrapKey from a key the caller may not use = %v, want ErrUnsupported joined with ErrPermission", err)
	}
	// A source stanza whose version is not the key KMS used.
	px.setFault(nil)
	lying := src
	lying.KeyVersion = awskmstest.KeyARN(keyB)
	if _, err := pB.RewrapKey(ctx, lying, ec); !errors.Is(err, core.ErrUnwrapFailed) {
		t.Fatalf("RewrapKey of a stanza with a wrong version = %v, want ErrUnwrapFailed", err)
	}
}

// TestKeyring uses the provider through core's keyring: DEK generation by
// KMS, wrap, unwrap, and a rewrap from a local-file-like provider onto KMS.
func TestKeyring(t *testing.T) {
	e := emulator(t)
	ctx := context.Background()
	p := newProvider(t, e.Endpoint, aliasA)
	ring, err := core.NewKeyring(p)
	if err != nil {
		t.Fatal(err)
	}
	ec := core.Context{"table": "users"}
	dek, wk, err := ring.GenerateDEK(ctx, ec)
	if err != nil {
		t.Fatal(err)
	}
	text, err := wk.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	back, err := core.ParseWrappedKey(text)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ring.Unwrap(ctx, back, ec)
	if err != nil || !got.Equal(dek) {
		t.Fatalf("keyring unwrap: %v", err)
	}
}

// TestImportCiphertext adopts blobs made with bare KMS calls, outside
// keyctl, and unwraps them through keyctl.
func TestImportCiphertext(t *testing.T) {
	e := emulator(t)
	ctx := context.Background()
	c := e.Client()
	p := newProvider(t, e.Endpoint, aliasA)
	ec := core.Context{"service": "billing", "purpose": "pii"}

	raw := make([]byte, 32)
	for i := range raw {
		raw[i] = byte(i * 7)
	}
	enc, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(keyA), Plaintext: raw, EncryptionContext: ec})
	if err != nil {
		t.Fatal(err)
	}
	gen, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(aliasA), KeySpec: types.DataKeySpecAes256})
	if err != nil {
		t.Fatal(err)
	}
	gen128, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(aliasA), KeySpec: types.DataKeySpecAes128})
	if err != nil {
		t.Fatal(err)
	}
	encB, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(keyB), Plaintext: raw})
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		blob []byte
		ec   core.Context
		dek  []byte
	}{
		{"Encrypt with context", enc.CiphertextBlob, ec, raw},
		{"GenerateDataKey", gen.CiphertextBlob, nil, gen.Plaintext},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := p.ImportCiphertext(ctx, tc.blob, tc.ec)
			if err != nil {
				t.Fatalf("ImportCiphertext: %v", err)
			}
			if s.Provider != awskms.Type || s.KeyID != aliasA || s.KeyVersion != awskmstest.KeyARN(keyA) || !bytes.Equal(s.Data, tc.blob) {
				t.Fatalf("imported stanza %+v", s)
			}
			wk := &core.WrappedKey{Stanzas: []core.Stanza{s}}
			text, err := wk.MarshalText()
			if err != nil {
				t.Fatal(err)
			}
			back, err := core.ParseWrappedKey(text)
			if err != nil {
				t.Fatal(err)
			}
			ring, err := core.NewKeyring(p)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ring.Unwrap(ctx, back, tc.ec)
			if err != nil {
				t.Fatalf("unwrap of the imported key: %v", err)
			}
			if !got.Equal(core.DEK(tc.dek)) {
				t.Fatal("imported key unwraps to another DEK")
			}
		})
	}
	for _, tc := range []struct {
		name string
		blob []byte
		ec   core.Context
		want error
	}{
		{"16-byte key", gen128.CiphertextBlob, nil, core.ErrMalformed},
		{"missing context", enc.CiphertextBlob, nil, core.ErrUnwrapFailed},
		{"other key", encB.CiphertextBlob, nil, core.ErrUnwrapFailed},
		{"garbage", []byte("not a ciphertext blob"), nil, core.ErrUnwrapFailed},
		{"empty", nil, nil, core.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := p.ImportCiphertext(ctx, tc.blob, tc.ec); !errors.Is(err, tc.want) {
				t.Fatalf("ImportCiphertext = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestRotation uses an emulator of its own whose key has a rotation date a
// few seconds ahead: a wrap made before that date, with the first backing
// key, must still unwrap after the emulator has rotated the key (on the
// first request after the date), and ReEncrypt moves it onto the new
// backing key. RotateKeyOnDemand, which local-kms does not implement, maps
// to ErrUnsupported.
func TestRotation(t *testing.T) {
	id, fresh := awskmstest.NewKeyID(), awskmstest.NewKeyID()
	rotateAt := time.Now().Add(3 * time.Second)
	e := awskmstest.Start(t, awskmstest.Seed{
		Keys:    []awskmstest.Key{{ID: id, NextRotation: rotateAt}, {ID: fresh}},
		Aliases: []awskmstest.Alias{{Name: "alias/rotating", TargetKeyID: id}},
	})
	ctx := context.Background()
	p := newProvider(t, e.Endpoint, "alias/rotating")
	ec := core.Context{"table": "users"}
	dek := mustDEK(t)

	before, err := p.WrapKey(ctx, dek, ec)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := awskmstest.BlobKeyVersion(before.Data); err != nil || v != 0 {
		t.Fatalf("wrap before the rotation date used backing key %d (%v); the machine is too slow for a 3s window", v, err)
	}
	if on, next, err := p.RotationStatus(ctx); err != nil || !on {
		t.Fatalf("RotationStatus = %v, %v, %v; want enabled", on, next, err)
	}
	time.Sleep(time.Until(rotateAt) + 50*time.Millisecond)

	after, err := p.WrapKey(ctx, dek, ec)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := awskmstest.BlobKeyVersion(after.Data); err != nil || v != 1 {
		t.Fatalf("wrap after the rotation date used backing key %d (%v), want 1: the key did not rotate", v, err)
	}
	if after.KeyVersion != before.KeyVersion || after.KeyVersion != awskmstest.KeyARN(id) {
		t.Fatalf("key version changed across rotation: %q, %q", before.KeyVersion, after.KeyVersion)
	}
	unwrapEqual(t, p, before, ec, dek)
	unwrapEqual(t, p, after, ec, dek)

	moved, err := p.RewrapKey(ctx, before, ec)
	if err != nil {
		t.Fatalf("RewrapKey: %v", err)
	}
	if v, err := awskmstest.BlobKeyVersion(moved.Data); err != nil || v != 1 {
		t.Fatalf("ReEncrypt left the wrap on backing key %d (%v), want 1", v, err)
	}
	unwrapEqual(t, p, moved, ec, dek)

	_, err = p.RotateKey(ctx)
	if !errors.Is(err, core.ErrUnsupported) || !strings.Contains(err.Error(), "RotateKeyOnDemand") || !strings.Contains(err.Error(), "alias/rotating") {
		t.Fatalf("RotateKey on local-kms = %v, want ErrUnsupported naming RotateKeyOnDemand and the key", err)
	}
	if core.IsInputError(err) {
		t.Fatalf("ErrUnsupported counted as an input error: %v", err)
	}

	// Scheduled rotation on a key without it.
	pf := newProvider(t, e.Endpoint, fresh)
	if on, _, err := pf.RotationStatus(ctx); err != nil || on {
		t.Fatalf("RotationStatus of a fresh key = %v, %v", on, err)
	}
	if err := pf.EnableRotation(ctx, 0); err != nil {
		t.Fatalf("EnableRotation: %v", err)
	}
	if on, _, err := pf.RotationStatus(ctx); err != nil || !on {
		t.Fatalf("RotationStatus after EnableRotation = %v, %v", on, err)
	}
	if err := pf.EnableRotation(ctx, 30); !errors.Is(err, core.ErrMalformed) {
		t.Fatalf("EnableRotation(30 days) = %v, want ErrMalformed", err)
	}
}

// TestRotateKeyOnDemand checks the success path of RotateKey against an
// endpoint that implements it (a proxy answering as KMS does).
func TestRotateKeyOnDemand(t *testing.T) {
	e := emulator(t)
	px := newProxy(t, e)
	px.setFault(func(op string, n int) (int, string, bool) {
		if op == "RotateKeyOnDemand" {
			return http.StatusOK, `{"KeyId":"` + awskmstest.KeyARN(keyA) + `"}`, true
		}
		return 0, "", false
	})
	p := newProvider(t, px.URL, aliasA)
	v, err := p.RotateKey(context.Background())
	if err != nil || v != awskmstest.KeyARN(keyA) {
		t.Fatalf("RotateKey = %q, %v", v, err)
	}
}

// TestMoveToLocalFileAndBack moves a DEK wrapped by KMS onto the local-file
// provider and back with core's keyring and rewrapper, changing only which
// provider is primary (what a config edit does in the CLI).
func TestMoveToLocalFileAndBack(t *testing.T) {
	e := emulator(t)
	ctx := context.Background()
	ec := core.Context{"table": "users"}
	kmsP := newProvider(t, e.Endpoint, aliasA)
	fileP, err := localfile.Create(filepath.Join(t.TempDir(), "kek.json"), localfile.CreateOptions{KeyID: "dev"})
	if err != nil {
		t.Fatal(err)
	}
	ring := func(primary core.KeyProvider, others ...core.KeyProvider) *core.Keyring {
		r, err := core.NewKeyring(primary, others...)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	rewrap := func(r *core.Keyring, wk *core.WrappedKey) *core.WrappedKey {
		rw, err := r.NewRewrapper(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out, st, err := rw.Rewrap(ctx, wk, ec)
		if err != nil || st != core.Rewrapped {
			t.Fatalf("Rewrap = %v, %v", st, err)
		}
		return out
	}

	dek, wk, err := ring(kmsP).GenerateDEK(ctx, ec)
	if err != nil {
		t.Fatal(err)
	}
	onFile := rewrap(ring(fileP, kmsP), wk)
	if onFile.Stanzas[0].Provider != localfile.Type {
		t.Fatalf("first wrap after moving to the key file: %v", onFile.Stanzas[0].Ref())
	}
	onlyFile := &core.WrappedKey{Stanzas: onFile.Stanzas[:1]}
	if got, err := ring(fileP).Unwrap(ctx, onlyFile, ec); err != nil || !got.Equal(dek) {
		t.Fatalf("unwrap with the key file alone: %v", err)
	}
	back := rewrap(ring(kmsP, fileP), onlyFile)
	if s := back.Stanzas[0]; s.Provider != awskms.Type || s.KeyVersion != awskmstest.KeyARN(keyA) {
		t.Fatalf("first wrap after moving back: %v version %s", s.Ref(), s.KeyVersion)
	}
	onlyKMS := &core.WrappedKey{Stanzas: back.Stanzas[:1]}
	if got, err := ring(kmsP).Unwrap(ctx, onlyKMS, ec); err != nil || !got.Equal(dek) {
		t.Fatalf("unwrap with KMS alone: %v", err)
	}
}
