package awskms_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/keyctl/keyctl/providers/awskms"
	"github.com/keyctl/keyctl/providers/awskms/awskmstest"
)

// Keys of the shared emulator's seed.
var (
	keyA   = awskmstest.NewKeyID()
	keyB   = awskmstest.NewKeyID()
	aliasA = "alias/keyctl-test-a"
	aliasB = "alias/keyctl-test-b"
)

// shared is one emulator for the tests of this package that need no special
// seed; it starts on first use and stops in TestMain.
var shared struct {
	once sync.Once
	dir  string
	emu  *awskmstest.Emulator
	err  error
}

func emulator(tb testing.TB) *awskmstest.Emulator {
	tb.Helper()
	bin := awskmstest.Require(tb)
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "keyctl-localkms-")
		if shared.err != nil {
			return
		}
		shared.emu, shared.err = awskmstest.StartProcess(bin, shared.dir, awskmstest.Seed{
			Keys:    []awskmstest.Key{{ID: keyA}, {ID: keyB}},
			Aliases: []awskmstest.Alias{{Name: aliasA, TargetKeyID: keyA}, {Name: aliasB, TargetKeyID: keyB}},
		})
	})
	if shared.err != nil {
		tb.Fatalf("start local-kms: %v", shared.err)
	}
	return shared.emu
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.emu != nil {
		if err := shared.emu.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop local-kms:", err)
		}
		if code != 0 {
			log := shared.emu.Log()
			lines := strings.SplitAfter(log, "\n")
			if len(lines) > 200 {
				log = fmt.Sprintf("[%d earlier lines left out]\n", len(lines)-200) + strings.Join(lines[len(lines)-200:], "")
			}
			fmt.Fprintf(os.Stderr, "local-kms log (shared emulator, %s):\n%s", shared.emu.Endpoint, log)
		}
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

var staticCreds = aws.Config{
	Credentials: credentials.NewStaticCredentialsProvider("AKIDLOCALKMS", "local-kms-secret", ""),
}

// newProvider returns a provider for keyID on endpoint (the emulator's, or
// a proxy's in front of it).
func newProvider(tb testing.TB, endpoint, keyID string, opts ...awskms.Option) *awskms.Provider {
	tb.Helper()
	opts = append([]awskms.Option{awskms.WithAWSConfig(staticCreds)}, opts...)
	p, err := awskms.New(context.Background(), awskms.Config{
		KeyID:    keyID,
		Region:   awskmstest.Region,
		Endpoint: endpoint,
	}, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// proxy is a loopback HTTP server in front of an emulator that records the
// KMS operations it forwards and can answer some requests itself (to
// simulate throttling, access denied, ...).
type proxy struct {
	*httptest.Server
	mu      sync.Mutex
	targets []string
	// fault, if set, may answer a request instead of the emulator: it gets
	// the operation ("Encrypt") and the 1-based count of requests so far.
	fault atomic.Pointer[func(op string, n int) (status int, body string, ok bool)]
	n     atomic.Int64
}

func newProxy(tb testing.TB, e *awskmstest.Emulator) *proxy {
	tb.Helper()
	u, err := url.Parse(e.Endpoint)
	if err != nil {
		tb.Fatal(err)
	}
	p := &proxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "TrentService.")
		n := int(p.n.Add(1))
		p.mu.Lock()
		p.targets = append(p.targets, op)
		p.mu.Unlock()
		if f := p.fault.Load(); f != nil {
			if status, body, ok := (*f)(op, n); ok {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "application/x-amz-json-1.1")
				w.WriteHeader(status)
				_, _ = io.WriteString(w, body)
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	tb.Cleanup(p.Close)
	return p
}

func (p *proxy) setFault(f func(op string, n int) (int, string, bool)) {
	if f == nil {
		p.fault.Store(nil)
		return
	}
	p.fault.Store(&f)
}

func (p *proxy) ops() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.targets...)
}

func (p *proxy) reset() {
	p.mu.Lock()
	p.targets = nil
	p.mu.Unlock()
	p.n.Store(0)
}

// kmsError is the JSON body of a KMS error answer.
func kmsError(code, msg string) string {
	return fmt.Sprintf(`{"__type":%q,"message":%q}`, code, msg)
}

func ctxTimeout(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}
