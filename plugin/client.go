package plugin

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyctl/keyctl/core"
	pb "github.com/keyctl/keyctl/plugin/proto"
)

// socketDirPrefix starts the name of the private directory that holds a
// plugin's Unix socket.
const socketDirPrefix = "keyctl-plugin-"

// Defaults of ClientConfig.
const (
	DefaultCallTimeout  = 30 * time.Second
	DefaultStartTimeout = 10 * time.Second
	DefaultMaxBatch     = 1024
	DefaultRestarts     = 3
	// maxBatchBytes bounds the estimated size of one batched request, well
	// under gRPC's 4 MiB default message limit.
	maxBatchBytes = 1 << 20
)

// ClientConfig says how to start and configure a provider plugin.
type ClientConfig struct {
	// Name is the provider's name in the configuration, for messages.
	Name string
	// Type is the provider type the plugin must report.
	Type string
	// Command returns a fresh command that runs the plugin. It is called
	// for every start (a crashed plugin is started again).
	Command func() *exec.Cmd
	// SHA256, if not nil, is the checksum the executable Command().Path
	// must have; keyctl refuses to start a binary that differs.
	SHA256 []byte
	// AutoMTLS runs the plugin connection over mutual TLS with throwaway
	// certificates (go-plugin's AutoMTLS).
	AutoMTLS bool
	// Logger receives the plugin's log lines and go-plugin's own. nil
	// logs warnings and errors to stderr.
	Logger hclog.Logger
	// Schema is the provider's schema, used to encode Values. The zero
	// Schema asks the plugin for it.
	Schema Schema
	// Values are the attributes of the provider block, checked against
	// the schema. The client keeps them (secrets included) to configure a
	// restarted plugin; Close zeroes them.
	Values Values
	// Secret obtains a secret the provider asks for during Configure that
	// Values lack (a passphrase typed on a terminal). nil fails with the
	// NeedSecretError.
	Secret func(ns *NeedSecretError) ([]byte, error)
	// CallTimeout is the deadline of a call whose context has none.
	CallTimeout time.Duration
	// StartTimeout bounds the plugin's start and handshake.
	StartTimeout time.Duration
	// MaxBatch bounds the items of one RPC.
	MaxBatch int
	// Restarts bounds the attempts to start a plugin again, with
	// exponential backoff, before a call fails.
	Restarts int
}

func (c *ClientConfig) defaults() {
	if c.CallTimeout <= 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	if c.Restarts <= 0 {
		c.Restarts = DefaultRestarts
	}
	if c.Logger == nil {
		c.Logger = hclog.New(&hclog.LoggerOptions{Name: "keyctl", Output: os.Stderr, Level: hclog.Warn})
	}
}

// proc is one running plugin process.
type proc struct {
	gp  *goplugin.Client
	rpc pb.ProviderClient
	dir string // private socket directory
	pid int
}

func (p *proc) kill() {
	p.gp.Kill()
	_ = os.RemoveAll(p.dir)
}

func (p *proc) exited() bool { return p.gp.Exited() }

// launch starts the plugin process and completes the handshake.
func launch(cfg *ClientConfig) (*proc, error) {
	dir, err := os.MkdirTemp("", socketDirPrefix+"*")
	if err != nil {
		return nil, fmt.Errorf("plugin socket directory: %w", err)
	}
	cmd := cfg.Command()
	env := cmd.Env
	if env == nil {
		env = os.Environ()
	}
	kept := env[:0:0]
	for _, e := range env {
		if !strings.HasPrefix(e, "PLUGIN_") && !strings.HasPrefix(e, Handshake.MagicCookieKey+"=") {
			kept = append(kept, e)
		}
	}
	cmd.Env = append(kept, goplugin.EnvUnixSocketDir+"="+dir)
	setParentDeathSignal(cmd)
	var sec *goplugin.SecureConfig
	if cfg.SHA256 != nil {
		sec = &goplugin.SecureConfig{Checksum: cfg.SHA256, Hash: sha256.New()}
	}
	gp := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: pluginSets(nil),
		Cmd:              cmd,
		SkipHostEnv:      true,
		SecureConfig:     sec,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		AutoMTLS:         cfg.AutoMTLS,
		Logger:           cfg.Logger,
		StartTimeout:     cfg.StartTimeout,
	})
	fail := func(err error) (*proc, error) {
		gp.Kill()
		_ = os.RemoveAll(dir)
		return nil, err
	}
	rc, err := gp.Client()
	if err != nil {
		if errors.Is(err, goplugin.ErrChecksumsDoNotMatch) {
			return fail(fmt.Errorf("plugin %s: its sha256 differs from the one in the configuration; refusing to run it: %w", cmd.Path, core.ErrPermission))
		}
		return fail(fmt.Errorf("start plugin %s: %w: %w", cmd.Path, core.ErrUnavailable, err))
	}
	raw, err := rc.Dispense(pluginName)
	if err != nil {
		return fail(fmt.Errorf("plugin %s: %w: %w", cmd.Path, core.ErrUnavailable, err))
	}
	rpc, ok := raw.(pb.ProviderClient)
	if !ok {
		return fail(fmt.Errorf("plugin %s: unexpected client type %T: %w", cmd.Path, raw, core.ErrUnavailable))
	}
	p := &proc{gp: gp, rpc: rpc, dir: dir}
	if rc := gp.ReattachConfig(); rc != nil {
		p.pid = rc.Pid
	}
	return p, nil
}

// FetchSchema starts the plugin, asks for its type and schema, and stops
// it. keyctl uses it for third-party plugins, whose schema it cannot know
// otherwise, before it checks their configuration block.
func FetchSchema(ctx context.Context, cfg ClientConfig) (string, Schema, error) {
	cfg.defaults()
	p, err := launch(&cfg)
	if err != nil {
		return "", Schema{}, fmt.Errorf("provider %q: %w", cfg.Name, err)
	}
	defer p.kill()
	ctx, cancel := context.WithTimeout(ctx, cfg.CallTimeout)
	defer cancel()
	r, err := p.rpc.Schema(ctx, &pb.SchemaRequest{})
	if err != nil {
		return "", Schema{}, statusError(fmt.Sprintf("provider %q: schema", cfg.Name), err)
	}
	return schemaFromPB(r)
}

// Client is a core.KeyProvider served by a plugin process. It also
// implements core.BatchProvider, the optional core interfaces
// (core.KeyRotator, core.VaultRewrapper, core.DataKeyGenerator,
// core.HealthChecker) and VersionAdmin; those whose capability the plugin
// does not report answer with an error wrapping core.ErrUnsupported.
//
// Single calls made concurrently are coalesced into one RPC. A call whose
// plugin process has died fails with an error wrapping core.ErrUnavailable
// that names the provider; the next call starts the plugin again. Close
// stops the plugin.
type Client struct {
	cfg  ClientConfig
	ref  core.KeyRef
	caps map[string]bool

	mu     sync.Mutex
	cur    *proc
	closed bool

	wrapQ   *batcher[*pb.WrapItem, *pb.StanzaResult]
	unwrapQ *batcher[*pb.UnwrapItem, *pb.DEKResult]
}

// Start starts the plugin, configures it with cfg.Values and returns the
// client.
func Start(ctx context.Context, cfg ClientConfig) (*Client, error) {
	cfg.defaults()
	c := &Client{cfg: cfg}
	if _, err := c.conn(ctx); err != nil {
		return nil, err
	}
	c.wrapQ = newBatcher(c, cfg.MaxBatch, wrapItemSize, c.sendWrap, nil)
	c.unwrapQ = newBatcher(c, cfg.MaxBatch, unwrapItemSize, c.sendUnwrap, func(r *pb.DEKResult) { clear(r.GetDek()) })
	return c, nil
}

// who names the provider in errors.
func (c *Client) who() string {
	if c.ref.KeyID != "" {
		return fmt.Sprintf("provider %q (%s, plugin)", c.cfg.Name, c.ref)
	}
	return fmt.Sprintf("provider %q (%s plugin)", c.cfg.Name, c.cfg.Type)
}

// conn returns the live plugin process, starting it (again) if needed.
func (c *Client) conn(ctx context.Context) (*proc, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("%s: client closed: %w", c.who(), core.ErrUnavailable)
	}
	if c.cur != nil && !c.cur.exited() {
		return c.cur, nil
	}
	if c.cur != nil {
		c.cur.kill()
		c.cur = nil
	}
	var lastErr error
	backoff := 50 * time.Millisecond
	for attempt := 0; attempt < c.cfg.Restarts; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("%s: start: %w (last error: %v)", c.who(), ctx.Err(), lastErr)
			case <-time.After(backoff):
			}
			backoff *= 2
		}
		p, err := c.startOnce(ctx)
		if err == nil {
			c.cur = p
			return p, nil
		}
		lastErr = err
		// Configuration and checksum errors will not go away by retrying.
		if !errors.Is(err, core.ErrUnavailable) {
			break
		}
	}
	return nil, lastErr
}

func (c *Client) startOnce(ctx context.Context) (*proc, error) {
	p, err := launch(&c.cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.who(), err)
	}
	ok := false
	defer func() {
		if !ok {
			p.kill()
		}
	}()
	cctx, cancel := c.callCtx(ctx)
	defer cancel()
	if len(c.cfg.Schema.Attributes) == 0 {
		r, err := p.rpc.Schema(cctx, &pb.SchemaRequest{})
		if err != nil {
			return nil, statusError(c.who()+": schema", err)
		}
		typ, s, err := schemaFromPB(r)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.who(), err)
		}
		if c.cfg.Type != "" && typ != c.cfg.Type {
			return nil, fmt.Errorf("%s: the plugin serves provider type %q: %w", c.who(), typ, core.ErrFailedPrecondition)
		}
		c.cfg.Schema = s
	}
	for asked := 0; ; asked++ {
		r, err := p.rpc.Configure(cctx, &pb.ConfigureRequest{Attributes: valuesToPB(c.cfg.Values, c.cfg.Schema)})
		if err != nil {
			return nil, statusError(c.who()+": configure", err)
		}
		if r.GetNeedSecret() != "" {
			ns := &NeedSecretError{Attribute: r.GetNeedSecret(), For: r.GetNeedSecretFor(), What: r.GetNeedSecretWhat()}
			a, known := c.cfg.Schema.Attr(ns.Attribute)
			if !known || !a.Secret || asked > 0 || c.cfg.Secret == nil {
				return nil, fmt.Errorf("%s: %w", c.who(), ns)
			}
			v, err := c.cfg.Secret(ns)
			if err != nil {
				return nil, err
			}
			if c.cfg.Values == nil {
				c.cfg.Values = Values{}
			}
			c.cfg.Values[ns.Attribute] = Value{Secret: v}
			continue
		}
		if err := fromPB(r.GetError()); err != nil {
			return nil, fmt.Errorf("%s: configure: %w", c.who(), err)
		}
		break
	}
	d, err := p.rpc.Describe(cctx, &pb.DescribeRequest{})
	if err != nil {
		return nil, statusError(c.who()+": describe", err)
	}
	if err := fromPB(d.GetError()); err != nil {
		return nil, fmt.Errorf("%s: describe: %w", c.who(), err)
	}
	ref := core.KeyRef{Provider: d.GetProviderType(), KeyID: d.GetKeyId()}
	if c.ref != (core.KeyRef{}) && ref != c.ref {
		return nil, fmt.Errorf("%s: restarted plugin serves %s: %w", c.who(), ref, core.ErrFailedPrecondition)
	}
	if c.cfg.Type != "" && ref.Provider != c.cfg.Type {
		return nil, fmt.Errorf("%s: the plugin serves provider type %q: %w", c.who(), ref.Provider, core.ErrFailedPrecondition)
	}
	c.ref = ref
	c.caps = map[string]bool{}
	for _, cp := range d.GetCapabilities() {
		c.caps[cp] = true
	}
	ok = true
	return p, nil
}

// callCtx gives ctx the default deadline when it has none.
func (c *Client) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.cfg.CallTimeout)
}

// callErr turns the failure of an RPC into an error naming the provider;
// when the process died, it says so (the next call restarts it).
func (c *Client) callErr(p *proc, op string, err error) error {
	if status.Code(err) == codes.Unavailable {
		// The connection broke: give go-plugin a moment to see whether
		// the process died, so that the error can say so.
		for i := 0; i < 50 && !p.exited(); i++ {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if p.exited() {
		return fmt.Errorf("%s: %s: plugin process (pid %d) exited; it is started again on the next call: %w", c.who(), op, p.pid, core.ErrUnavailable)
	}
	return statusError(c.who()+": "+op, err)
}

// Close stops the plugin process and zeroes the secrets the client kept.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.wrapQ != nil {
		c.wrapQ.stop()
		c.unwrapQ.stop()
	}
	if c.cur != nil {
		c.cur.kill()
		c.cur = nil
	}
	c.cfg.Values.Zero()
	return nil
}

// Pid returns the process id of the running plugin, or 0.
func (c *Client) Pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return 0
	}
	return c.cur.pid
}

// SocketDir returns the private directory of the running plugin's socket,
// or "" (for tests and diagnostics).
func (c *Client) SocketDir() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return ""
	}
	return c.cur.dir
}

// Ref returns the provider type and key id the plugin reported.
func (c *Client) Ref() core.KeyRef { return c.ref }

// Capabilities reports the optional operations the plugin supports.
func (c *Client) Capabilities() []string {
	var out []string
	for k := range c.caps {
		out = append(out, k)
	}
	return out
}

// rpcCall runs f against the live process with the call deadline.
func rpcCall[R any](c *Client, ctx context.Context, op string, f func(ctx context.Context, rpc pb.ProviderClient) (R, error)) (R, error) {
	var zero R
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	p, err := c.conn(ctx)
	if err != nil {
		return zero, err
	}
	cctx, cancel := c.callCtx(ctx)
	defer cancel()
	r, err := f(cctx, p.rpc)
	if err != nil {
		if ctx.Err() != nil {
			return zero, fmt.Errorf("%s: %s: %w", c.who(), op, ctx.Err())
		}
		return zero, c.callErr(p, op, err)
	}
	return r, nil
}

// CurrentVersion asks the plugin for its KEK's current version.
func (c *Client) CurrentVersion(ctx context.Context) (string, error) {
	d, err := rpcCall(c, ctx, "current version", func(ctx context.Context, rpc pb.ProviderClient) (*pb.DescribeResponse, error) {
		return rpc.Describe(ctx, &pb.DescribeRequest{})
	})
	if err != nil {
		return "", err
	}
	if err := fromPB(d.GetError()); err != nil {
		return "", fmt.Errorf("%s: %w", c.who(), err)
	}
	return d.GetCurrentVersion(), nil
}

// WrapKey wraps dek; concurrent calls share RPCs.
func (c *Client) WrapKey(ctx context.Context, dek core.DEK, ec core.Context) (core.Stanza, error) {
	if err := ctx.Err(); err != nil {
		return core.Stanza{}, err
	}
	r, err := c.wrapQ.do(ctx, &pb.WrapItem{Dek: dek, Context: contextToPB(ec)})
	if err != nil {
		return core.Stanza{}, err
	}
	return stanzaResult(r)
}

// UnwrapKey unwraps s; concurrent calls share RPCs.
func (c *Client) UnwrapKey(ctx context.Context, s core.Stanza, ec core.Context) (core.DEK, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r, err := c.unwrapQ.do(ctx, &pb.UnwrapItem{Stanza: stanzaToPB(s), Context: contextToPB(ec)})
	if err != nil {
		return nil, err
	}
	if err := fromPB(r.GetError()); err != nil {
		return nil, err
	}
	return core.DEK(r.GetDek()), nil
}

func stanzaResult(r *pb.StanzaResult) (core.Stanza, error) {
	if err := fromPB(r.GetError()); err != nil {
		return core.Stanza{}, err
	}
	return stanzaFromPB(r.GetStanza())
}

func (c *Client) sendWrap(ctx context.Context, items []*pb.WrapItem) ([]*pb.StanzaResult, error) {
	r, err := rpcCall(c, ctx, "wrap", func(ctx context.Context, rpc pb.ProviderClient) (*pb.WrapResponse, error) {
		return rpc.Wrap(ctx, &pb.WrapRequest{Items: items})
	})
	if err != nil {
		return nil, err
	}
	if len(r.GetResults()) != len(items) {
		return nil, fmt.Errorf("%s: wrap: %d results for %d items: %w", c.who(), len(r.GetResults()), len(items), core.ErrUnavailable)
	}
	return r.GetResults(), nil
}

func (c *Client) sendUnwrap(ctx context.Context, items []*pb.UnwrapItem) ([]*pb.DEKResult, error) {
	r, err := rpcCall(c, ctx, "unwrap", func(ctx context.Context, rpc pb.ProviderClient) (*pb.UnwrapResponse, error) {
		return rpc.Unwrap(ctx, &pb.UnwrapRequest{Items: items})
	})
	if err != nil {
		return nil, err
	}
	if len(r.GetResults()) != len(items) {
		for _, x := range r.GetResults() {
			clear(x.GetDek())
		}
		return nil, fmt.Errorf("%s: unwrap: %d results for %d items: %w", c.who(), len(r.GetResults()), len(items), core.ErrUnavailable)
	}
	return r.GetResults(), nil
}

func (c *Client) sendRewrap(vault bool) func(ctx context.Context, items []*pb.UnwrapItem) ([]*pb.StanzaResult, error) {
	return func(ctx context.Context, items []*pb.UnwrapItem) ([]*pb.StanzaResult, error) {
		r, err := rpcCall(c, ctx, "rewrap", func(ctx context.Context, rpc pb.ProviderClient) (*pb.RewrapResponse, error) {
			return rpc.Rewrap(ctx, &pb.RewrapRequest{Items: items, Vault: vault})
		})
		if err != nil {
			return nil, err
		}
		if len(r.GetResults()) != len(items) {
			return nil, fmt.Errorf("%s: rewrap: %d results for %d items: %w", c.who(), len(r.GetResults()), len(items), core.ErrUnavailable)
		}
		return r.GetResults(), nil
	}
}

// WrapKeys wraps many DEKs in bounded batches.
func (c *Client) WrapKeys(ctx context.Context, items []core.WrapRequest) []core.StanzaResult {
	in := make([]*pb.WrapItem, len(items))
	for i, it := range items {
		in[i] = &pb.WrapItem{Dek: it.DEK, Context: contextToPB(it.Context)}
	}
	out := make([]core.StanzaResult, len(items))
	bulk(ctx, c.cfg.MaxBatch, wrapItemSize, in, c.sendWrap, func(i int, r *pb.StanzaResult, err error) {
		if err == nil {
			out[i].Stanza, err = stanzaResult(r)
		}
		out[i].Err = err
	})
	return out
}

// UnwrapKeys unwraps many stanzas in bounded batches.
func (c *Client) UnwrapKeys(ctx context.Context, items []core.UnwrapRequest) []core.DEKResult {
	in := make([]*pb.UnwrapItem, len(items))
	for i, it := range items {
		in[i] = &pb.UnwrapItem{Stanza: stanzaToPB(it.Stanza), Context: contextToPB(it.Context)}
	}
	out := make([]core.DEKResult, len(items))
	bulk(ctx, c.cfg.MaxBatch, unwrapItemSize, in, c.sendUnwrap, func(i int, r *pb.DEKResult, err error) {
		if err == nil {
			err = fromPB(r.GetError())
		}
		if err == nil {
			out[i].DEK = core.DEK(r.GetDek())
		}
		out[i].Err = err
	})
	return out
}

// RewrapKeys moves stanzas of this provider onto its current KEK version
// inside the plugin process (unwrap, wrap, verify there), in bounded
// batches. The DEKs never cross the plugin channel.
func (c *Client) RewrapKeys(ctx context.Context, items []core.UnwrapRequest) []core.StanzaResult {
	in := make([]*pb.UnwrapItem, len(items))
	for i, it := range items {
		in[i] = &pb.UnwrapItem{Stanza: stanzaToPB(it.Stanza), Context: contextToPB(it.Context)}
	}
	out := make([]core.StanzaResult, len(items))
	bulk(ctx, c.cfg.MaxBatch, unwrapItemSize, in, c.sendRewrap(false), func(i int, r *pb.StanzaResult, err error) {
		if err == nil {
			out[i].Stanza, err = stanzaResult(r)
		}
		out[i].Err = err
	})
	return out
}

func (c *Client) unsupported(op string) error {
	return fmt.Errorf("%s: %s: %w", c.who(), op, core.ErrUnsupported)
}

// RewrapKey is core.VaultRewrapper through the plugin.
func (c *Client) RewrapKey(ctx context.Context, src core.Stanza, ec core.Context) (core.Stanza, error) {
	if !c.caps[CapVaultRewrap] {
		return core.Stanza{}, c.unsupported("vault rewrap")
	}
	rs, err := c.sendRewrap(true)(ctx, []*pb.UnwrapItem{{Stanza: stanzaToPB(src), Context: contextToPB(ec)}})
	if err != nil {
		return core.Stanza{}, err
	}
	return stanzaResult(rs[0])
}

// GenerateDataKey is core.DataKeyGenerator through the plugin.
func (c *Client) GenerateDataKey(ctx context.Context, ec core.Context) (core.DEK, core.Stanza, error) {
	if !c.caps[CapGenerateDataKey] {
		return nil, core.Stanza{}, c.unsupported("generate data key")
	}
	r, err := rpcCall(c, ctx, "generate data key", func(ctx context.Context, rpc pb.ProviderClient) (*pb.GenerateDataKeyResponse, error) {
		return rpc.GenerateDataKey(ctx, &pb.GenerateDataKeyRequest{Context: contextToPB(ec)})
	})
	if err != nil {
		return nil, core.Stanza{}, err
	}
	if err := fromPB(r.GetError()); err != nil {
		return nil, core.Stanza{}, err
	}
	s, err := stanzaFromPB(r.GetStanza())
	if err != nil {
		clear(r.GetDek())
		return nil, core.Stanza{}, err
	}
	return core.DEK(r.GetDek()), s, nil
}

// RotateKey is core.KeyRotator through the plugin.
func (c *Client) RotateKey(ctx context.Context) (string, error) {
	if !c.caps[CapRotate] {
		return "", c.unsupported("rotate")
	}
	r, err := rpcCall(c, ctx, "rotate", func(ctx context.Context, rpc pb.ProviderClient) (*pb.RotateKeyResponse, error) {
		return rpc.RotateKey(ctx, &pb.RotateKeyRequest{})
	})
	if err != nil {
		return "", err
	}
	if err := fromPB(r.GetError()); err != nil {
		return "", err
	}
	return r.GetVersion(), nil
}

// Health is core.HealthChecker through the plugin. Without the capability
// it only checks that the plugin answers.
func (c *Client) Health(ctx context.Context) error {
	if !c.caps[CapHealth] {
		_, err := c.CurrentVersion(ctx)
		return err
	}
	r, err := rpcCall(c, ctx, "health", func(ctx context.Context, rpc pb.ProviderClient) (*pb.HealthResponse, error) {
		return rpc.Health(ctx, &pb.HealthRequest{})
	})
	if err != nil {
		return err
	}
	return fromPB(r.GetError())
}

// Versions is VersionAdmin through the plugin.
func (c *Client) Versions(ctx context.Context) (string, []VersionInfo, error) {
	if !c.caps[CapVersions] {
		return "", nil, fmt.Errorf("%s: KEK versions are managed in its own vault: %w", c.who(), core.ErrUnsupported)
	}
	r, err := rpcCall(c, ctx, "list versions", func(ctx context.Context, rpc pb.ProviderClient) (*pb.ListVersionsResponse, error) {
		return rpc.ListVersions(ctx, &pb.ListVersionsRequest{})
	})
	if err != nil {
		return "", nil, err
	}
	if err := fromPB(r.GetError()); err != nil {
		return "", nil, err
	}
	out := make([]VersionInfo, len(r.GetVersions()))
	for i, v := range r.GetVersions() {
		out[i] = VersionInfo{Version: v.GetVersion(), State: v.GetState(), Created: time.Unix(v.GetCreatedUnix(), 0).UTC(), Current: v.GetCurrent()}
	}
	return r.GetLocation(), out, nil
}

// SetVersionState is VersionAdmin through the plugin.
func (c *Client) SetVersionState(ctx context.Context, version, state string) error {
	if !c.caps[CapVersions] {
		return fmt.Errorf("%s: KEK versions are managed in its own vault: %w", c.who(), core.ErrUnsupported)
	}
	r, err := rpcCall(c, ctx, "set version state", func(ctx context.Context, rpc pb.ProviderClient) (*pb.SetVersionStateResponse, error) {
		return rpc.SetVersionState(ctx, &pb.SetVersionStateRequest{Version: version, State: state})
	})
	if err != nil {
		return err
	}
	return fromPB(r.GetError())
}

// Interface checks.
var (
	_ core.BatchProvider    = (*Client)(nil)
	_ core.KeyRotator       = (*Client)(nil)
	_ core.VaultRewrapper   = (*Client)(nil)
	_ core.DataKeyGenerator = (*Client)(nil)
	_ core.HealthChecker    = (*Client)(nil)
	_ VersionAdmin          = (*Client)(nil)
)

// SelfCommand returns a Command function that runs the current executable
// with args, for a program that serves its own built-in providers (keyctl
// runs `keyctl __provider TYPE`).
func SelfCommand(args ...string) (func() *exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("locate own executable: %w", err)
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	return func() *exec.Cmd { return exec.Command(exe, args...) }, nil
}
