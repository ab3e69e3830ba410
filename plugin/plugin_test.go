package plugin_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/core/providertest"
	"github.com/keyctl/keyctl/plugin"
	"github.com/keyctl/keyctl/plugin/builtin"
	"github.com/keyctl/keyctl/providers/localfile"
)

// TestMain lets the test binary act as a provider plugin (the age style:
// plugin tests re-execute the test binary) and as a host that a test kills.
func TestMain(m *testing.M) {
	switch {
	case os.Getenv("KEYCTL_TEST_SERVE") == "slowlocalfile":
		// localfile with a 20µs pause per unwrap, so that a test can
		// kill it in the middle of a batch.
		plugin.Serve(plugin.Provider{Type: "localfile", Schema: builtin.LocalFile.Schema,
			Open: func(ctx context.Context, v plugin.Values) (core.KeyProvider, error) {
				p, err := builtin.LocalFile.Open(ctx, v)
				if err != nil {
					return nil, err
				}
				return slow{p}, nil
			}})
		os.Exit(1)
	case os.Getenv("KEYCTL_TEST_SERVE") == "barrierlocalfile":
		// localfile whose unwraps wait until four are in flight at once (or
		// fail after 5 s), proving the server does not serve a batch one
		// item after another.
		b := &barrier{n: 4, all: make(chan struct{})}
		plugin.Serve(plugin.Provider{Type: "localfile", Schema: builtin.LocalFile.Schema, Parallel: 4,
			Open: func(ctx context.Context, v plugin.Values) (core.KeyProvider, error) {
				p, err := builtin.LocalFile.Open(ctx, v)
				if err != nil {
					return nil, err
				}
				return barrierProvider{p, b}, nil
			}})
		os.Exit(1)
	case os.Getenv("KEYCTL_TEST_SERVE") != "":
		if err := builtin.Serve(os.Getenv("KEYCTL_TEST_SERVE")); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		os.Exit(1)
	case os.Getenv("KEYCTL_TEST_HOST") != "":
		os.Exit(host(os.Getenv("KEYCTL_TEST_HOST")))
	}
	os.Exit(m.Run())
}

// host starts a plugin for keyFile, prints its pid and socket directory,
// and waits to be killed.
func host(keyFile string) int {
	c, err := plugin.Start(context.Background(), localConfig(keyFile, nil))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println(c.Pid(), c.SocketDir())
	time.Sleep(time.Minute)
	return 0
}

func selfCommand(typ string) func() *exec.Cmd {
	return func() *exec.Cmd {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "KEYCTL_TEST_SERVE="+typ)
		return cmd
	}
}

func localConfig(keyFile string, pass []byte) plugin.ClientConfig {
	v := plugin.Values{"key_file": {Str: keyFile}}
	if pass != nil {
		v["passphrase"] = plugin.Value{Secret: pass}
	}
	return plugin.ClientConfig{
		Name:    "test",
		Type:    "localfile",
		Command: selfCommand("localfile"),
		Schema:  builtin.LocalFile.Schema,
		Values:  v,
		Logger:  hclog.NewNullLogger(),
	}
}

func newKeyFile(t testing.TB, keyID string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kek.json")
	if _, err := localfile.Create(path, localfile.CreateOptions{KeyID: keyID}); err != nil {
		t.Fatal(err)
	}
	return path
}

func startLocal(t testing.TB, keyFile string) *plugin.Client {
	t.Helper()
	c, err := plugin.Start(context.Background(), localConfig(keyFile, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestConformanceThroughPlugin(t *testing.T) {
	newProvider := func(keyID string) func(t *testing.T) core.KeyProvider {
		return func(t *testing.T) core.KeyProvider { return startLocal(t, newKeyFile(t, keyID)) }
	}
	providertest.Run(t, providertest.Harness{
		New:   newProvider("conformance"),
		Other: newProvider("conformance-other"),
	})
}

func TestErrorsKeepTheirSentinels(t *testing.T) {
	c := startLocal(t, newKeyFile(t, "errs"))
	ctx := context.Background()
	dek, _ := core.NewDEK()
	s, err := c.WrapKey(ctx, dek, core.Context{"a": "b"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.UnwrapKey(ctx, s, core.Context{"a": "c"})
	if !errors.Is(err, core.ErrUnwrapFailed) || !core.IsInputError(err) {
		t.Fatalf("wrong context: %v", err)
	}
	s.KeyVersion = "99"
	if _, err := c.UnwrapKey(ctx, s, core.Context{"a": "b"}); !errors.Is(err, core.ErrKeyNotFound) {
		t.Fatalf("unknown version: %v", err)
	}
	if err := c.SetVersionState(ctx, "1", "disabled"); !errors.Is(err, core.ErrFailedPrecondition) {
		t.Fatalf("disable current: %v", err)
	}
	if _, _, err := c.GenerateDataKey(ctx, nil); !errors.Is(err, core.ErrUnsupported) {
		t.Fatalf("generate: %v", err)
	}
}

func TestPassphraseOverTheChannel(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kek.json")
	if _, err := localfile.Create(path, localfile.CreateOptions{KeyID: "p", Passphrase: []byte("s3cret pass")}); err != nil {
		t.Fatal(err)
	}
	// Not given: the plugin asks, the host's Secret callback answers.
	cfg := localConfig(path, nil)
	asked := 0
	cfg.Secret = func(ns *plugin.NeedSecretError) ([]byte, error) {
		asked++
		if ns.Attribute != "passphrase" || !strings.Contains(ns.What, path) {
			t.Errorf("asked for %+v", ns)
		}
		return []byte("s3cret pass"), nil
	}
	c, err := plugin.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if asked != 1 {
		t.Fatalf("asked %d times", asked)
	}
	// No callback: a NeedSecretError.
	_, err = plugin.Start(context.Background(), localConfig(path, nil))
	if _, ok := plugin.AsNeedSecret(err); !ok {
		t.Fatalf("no passphrase: %v", err)
	}
	// Wrong: permission, and the passphrase is not in the message.
	_, err = plugin.Start(context.Background(), localConfig(path, []byte("wrong guess")))
	if !errors.Is(err, core.ErrPermission) || strings.Contains(err.Error(), "wrong guess") {
		t.Fatalf("wrong passphrase: %v", err)
	}
}

func TestCoalescing(t *testing.T) {
	c := startLocal(t, newKeyFile(t, "co"))
	ctx := context.Background()
	const n = 2000
	errs := make(chan error, n)
	for range n {
		go func() {
			dek, _ := core.NewDEK()
			s, err := c.WrapKey(ctx, dek, nil)
			if err == nil {
				var got core.DEK
				got, err = c.UnwrapKey(ctx, s, nil)
				if err == nil && !got.Equal(dek) {
					err = errors.New("different DEK")
				}
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func TestBulkSplitsBatches(t *testing.T) {
	c := startLocal(t, newKeyFile(t, "bulk"))
	ctx := context.Background()
	const n = 5000 // several batches of DefaultMaxBatch
	reqs := make([]core.WrapRequest, n)
	for i := range reqs {
		reqs[i].DEK, _ = core.NewDEK()
		reqs[i].Context = core.Context{"row": fmt.Sprint(i)}
	}
	reqs[7].DEK = reqs[7].DEK[:5] // one bad item fails alone
	ws := c.WrapKeys(ctx, reqs)
	un := make([]core.UnwrapRequest, 0, n)
	for i, r := range ws {
		if i == 7 {
			if !errors.Is(r.Err, core.ErrMalformed) {
				t.Fatalf("bad item: %v", r.Err)
			}
			continue
		}
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		un = append(un, core.UnwrapRequest{Stanza: r.Stanza, Context: reqs[i].Context})
	}
	for i, r := range c.UnwrapKeys(ctx, un) {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		if !r.DEK.Equal(reqs[i+boolInt(i >= 7)].DEK) {
			t.Fatalf("item %d: different DEK", i)
		}
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestDeadlineReachesCall(t *testing.T) {
	c := startLocal(t, newKeyFile(t, "dl"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	time.Sleep(time.Millisecond)
	dek, _ := core.NewDEK()
	if _, err := c.WrapKey(ctx, dek, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("expired deadline: %v", err)
	}
}

type slow struct{ core.KeyProvider }

func (s slow) UnwrapKey(ctx context.Context, st core.Stanza, ec core.Context) (core.DEK, error) {
	time.Sleep(20 * time.Microsecond)
	return s.KeyProvider.UnwrapKey(ctx, st, ec)
}

// killer wraps the client and SIGKILLs the plugin process while the second
// batched rewrap is in flight.
type killer struct {
	*plugin.Client
	calls  atomic.Int32
	killed atomic.Bool
}

func (k *killer) RewrapKeys(ctx context.Context, items []core.UnwrapRequest) []core.StanzaResult {
	if k.calls.Add(1) == 2 {
		pid := k.Pid()
		go func() {
			time.Sleep(5 * time.Millisecond) // a batch takes over 80ms
			_ = syscall.Kill(pid, syscall.SIGKILL)
			k.killed.Store(true)
		}()
	}
	return k.Client.RewrapKeys(ctx, items)
}

func TestKillPluginMidBulkRewrap(t *testing.T) {
	path := newKeyFile(t, "kill")
	lp, err := localfile.Open(path, localfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const n = 5000
	items := make([]core.RewrapItem, n)
	deks := make([]core.DEK, n)
	for i := range items {
		deks[i], _ = core.NewDEK()
		ec := core.Context{"row": fmt.Sprint(i)}
		s, err := lp.WrapKey(ctx, deks[i], ec)
		if err != nil {
			t.Fatal(err)
		}
		items[i] = core.RewrapItem{Key: &core.WrappedKey{Stanzas: []core.Stanza{s}}, Context: ec}
	}
	if _, err := lp.RotateKey(ctx); err != nil {
		t.Fatal(err)
	}

	cfg := localConfig(path, nil)
	cfg.Command = selfCommand("slowlocalfile")
	c, err := plugin.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	k := &killer{Client: c}
	ring, err := core.NewKeyring(k)
	if err != nil {
		t.Fatal(err)
	}
	rw, err := ring.NewRewrapper(ctx)
	if err != nil {
		t.Fatal(err)
	}
	res := rw.RewrapAll(ctx, items, 1)
	if !k.killed.Load() {
		t.Fatal("the plugin was not killed")
	}
	failed := 0
	for i, r := range res {
		if r.Err != nil {
			failed++
			if !errors.Is(r.Err, core.ErrUnavailable) || !strings.Contains(r.Err.Error(), `provider "test"`) || !strings.Contains(r.Err.Error(), "exited") {
				t.Fatalf("item %d: unclear error: %v", i, r.Err)
			}
			if r.Key != items[i].Key {
				t.Fatalf("item %d: a failed item lost its record", i)
			}
		}
		items[i].Key = r.Key
	}
	if failed == 0 {
		t.Fatal("no item failed although the plugin was killed mid-call")
	}
	t.Logf("%d of %d items failed with the plugin killed; first: %v", failed, n, firstErr(res))

	// A rerun (the plugin restarts on the next call) completes.
	for i, r := range rw.RewrapAll(ctx, items, 2) {
		if r.Err != nil {
			t.Fatalf("rerun, item %d: %v", i, r.Err)
		}
		if i%997 == 0 {
			got, err := ring.Unwrap(ctx, r.Key, items[i].Context)
			if err != nil || !got.Equal(deks[i]) {
				t.Fatalf("item %d after rerun: %v", i, err)
			}
		}
		if r.Key.Stanzas[0].KeyVersion != "2" {
			t.Fatalf("item %d at version %q", i, r.Key.Stanzas[0].KeyVersion)
		}
	}
}

func firstErr(res []core.RewrapResult) error {
	for _, r := range res {
		if r.Err != nil {
			return r.Err
		}
	}
	return nil
}

func TestSingleCallAfterCrashRestarts(t *testing.T) {
	c := startLocal(t, newKeyFile(t, "crash"))
	ctx := context.Background()
	pid := c.Pid()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	dek, _ := core.NewDEK()
	var err error
	for i := 0; i < 2; i++ { // the first call may see the dead process
		if _, err = c.WrapKey(ctx, dek, nil); err == nil {
			break
		}
		if !errors.Is(err, core.ErrUnavailable) || !strings.Contains(err.Error(), `provider "test"`) {
			t.Fatalf("after crash: %v", err)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if c.Pid() == pid {
		t.Fatal("same pid after restart")
	}
}

// TestNoOrphans kills a host with SIGKILL: its plugin must exit and the
// private socket directory must go.
func TestNoOrphans(t *testing.T) {
	path := newKeyFile(t, "orphan")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "KEYCTL_TEST_HOST="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	var dir string
	if _, err := fmt.Sscan(line, &pid, &dir); err != nil {
		t.Fatalf("host said %q: %v", line, err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("socket dir: %v", err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	waitGone(t, pid)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("socket dir %s left behind", dir)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitGone waits until pid no longer runs (gone or a zombie).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		if f := strings.Fields(string(b)); len(f) > 2 && f[2] == "Z" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("plugin process %d still runs", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCloseReleasesWaiters: calls in flight or queued when the client is
// closed return instead of hanging (the CLI's context has no deadline).
func TestCloseReleasesWaiters(t *testing.T) {
	c := startLocal(t, newKeyFile(t, "close"))
	ctx := context.Background()
	done := make(chan error, 200)
	for range 200 {
		go func() {
			dek, _ := core.NewDEK()
			_, err := c.WrapKey(ctx, dek, nil)
			done <- err
		}()
	}
	c.Close()
	timeout := time.After(10 * time.Second)
	for range 200 {
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, core.ErrUnavailable) {
				t.Errorf("after close: %v", err)
			}
		case <-timeout:
			t.Fatal("a call hangs after Close")
		}
	}
}

type barrier struct {
	n       int32
	arrived atomic.Int32
	all     chan struct{}
}

type barrierProvider struct {
	core.KeyProvider
	b *barrier
}

func (p barrierProvider) UnwrapKey(ctx context.Context, st core.Stanza, ec core.Context) (core.DEK, error) {
	if p.b.arrived.Add(1) == p.b.n {
		close(p.b.all)
	}
	select {
	case <-p.b.all:
	case <-time.After(5 * time.Second):
		return nil, fmt.Errorf("only %d of %d unwraps ran at once: %w", p.b.arrived.Load(), p.b.n, core.ErrUnavailable)
	}
	return p.KeyProvider.UnwrapKey(ctx, st, ec)
}

// TestServerServesBatchItemsConcurrently: the items of one batch reach the
// provider concurrently (up to Provider.Parallel), so a network vault or an
// HSM behind a plugin is not driven one call at a time.
func TestServerServesBatchItemsConcurrently(t *testing.T) {
	path := newKeyFile(t, "barrier")
	lp, err := localfile.Open(path, localfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	reqs := make([]core.UnwrapRequest, 4)
	deks := make([]core.DEK, 4)
	for i := range reqs {
		deks[i], _ = core.NewDEK()
		s, err := lp.WrapKey(ctx, deks[i], nil)
		if err != nil {
			t.Fatal(err)
		}
		reqs[i] = core.UnwrapRequest{Stanza: s}
	}
	cfg := localConfig(path, nil)
	cfg.Command = selfCommand("barrierlocalfile")
	c, err := plugin.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i, r := range c.UnwrapKeys(ctx, reqs) {
		if r.Err != nil || !r.DEK.Equal(deks[i]) {
			t.Fatalf("item %d: %v", i, r.Err)
		}
	}
}
