package plugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"

	"github.com/keyctl/keyctl/core"
	pb "github.com/keyctl/keyctl/plugin/proto"
)

// Serve serves p as a plugin process and returns when the host is done
// with it. Call it from the provider's main. The process's stdout is the
// go-plugin handshake channel: log to stderr only (go-plugin forwards it to
// the host's logger).
//
// Run by hand (not by keyctl), Serve prints a short explanation and exits
// with status 1.
func Serve(p Provider) {
	if err := p.Schema.Validate(); err != nil || p.Type == "" || p.Open == nil {
		fmt.Fprintf(os.Stderr, "keyctl provider plugin %q: invalid definition: %v\n", p.Type, err)
		os.Exit(1)
	}
	if os.Getenv(Handshake.MagicCookieKey) != Handshake.MagicCookieValue {
		fmt.Fprintf(os.Stderr, "This is a keyctl provider plugin (type %q); keyctl starts it, it is not run by hand.\n", p.Type)
		os.Exit(1)
	}
	watchParentDeath()
	goplugin.Serve(&goplugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: pluginSets(NewServer(p)),
		GRPCServer:       goplugin.DefaultGRPCServer,
		Logger: hclog.New(&hclog.LoggerOptions{
			Name:       "provider-" + p.Type,
			Output:     os.Stderr,
			JSONFormat: true,
			Level:      hclog.Info,
		}),
	})
}

// watchParentDeath handles the parent-death signal the host sets
// (SIGTERM, see sysproc_linux.go): when keyctl dies, even by SIGKILL, the
// plugin removes the private socket directory keyctl made for it and exits.
//
// A SIGTERM while keyctl is alive (sent to the whole process group, say by
// a service manager) is ignored: keyctl stops at a safe point and then
// closes its plugins itself.
func watchParentDeath() {
	dir := os.Getenv("PLUGIN_UNIX_SOCKET_DIR")
	parent := os.Getppid()
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM)
	go func() {
		for range ch {
			if os.Getppid() == parent && parent != 1 {
				continue
			}
			if dir != "" && strings.HasPrefix(filepath.Base(dir), socketDirPrefix) {
				_ = os.RemoveAll(dir)
			}
			os.Exit(1)
		}
	}()
}

// server implements the gRPC service over one Provider.
type server struct {
	pb.UnimplementedProviderServer
	def Provider

	mu sync.RWMutex
	kp core.KeyProvider
}

// NewServer returns the gRPC service implementation for p, for tests that
// serve a provider in-process (go-plugin's test helpers).
func NewServer(p Provider) *server { return &server{def: p} }

func (s *server) provider() (core.KeyProvider, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.kp == nil {
		return nil, fmt.Errorf("provider %q: not configured: %w", s.def.Type, core.ErrFailedPrecondition)
	}
	return s.kp, nil
}

func (s *server) Schema(context.Context, *pb.SchemaRequest) (*pb.SchemaResponse, error) {
	return schemaToPB(s.def.Type, s.def.Schema), nil
}

func (s *server) Configure(ctx context.Context, req *pb.ConfigureRequest) (*pb.ConfigureResponse, error) {
	v, err := valuesFromPB(req.GetAttributes(), s.def.Schema)
	if err != nil {
		return &pb.ConfigureResponse{Error: toPB(err)}, nil
	}
	defer v.Zero()
	kp, err := s.def.Open(ctx, v)
	if err != nil {
		if ns, ok := AsNeedSecret(err); ok {
			return &pb.ConfigureResponse{NeedSecret: ns.Attribute, NeedSecretWhat: ns.What, NeedSecretFor: ns.For}, nil
		}
		return &pb.ConfigureResponse{Error: toPB(err)}, nil
	}
	if kp.Ref().Provider != s.def.Type {
		return &pb.ConfigureResponse{Error: toPB(fmt.Errorf("provider opened with type %q, declared %q", kp.Ref().Provider, s.def.Type))}, nil
	}
	s.mu.Lock()
	s.kp = kp
	s.mu.Unlock()
	return &pb.ConfigureResponse{}, nil
}

func (s *server) Describe(ctx context.Context, _ *pb.DescribeRequest) (*pb.DescribeResponse, error) {
	kp, err := s.provider()
	if err != nil {
		return &pb.DescribeResponse{Error: toPB(err)}, nil
	}
	v, err := kp.CurrentVersion(ctx)
	if err != nil {
		return &pb.DescribeResponse{Error: toPB(err)}, nil
	}
	r := &pb.DescribeResponse{ProviderType: kp.Ref().Provider, KeyId: kp.Ref().KeyID, CurrentVersion: v}
	if _, ok := kp.(core.KeyRotator); ok {
		r.Capabilities = append(r.Capabilities, CapRotate)
	}
	if _, ok := kp.(core.VaultRewrapper); ok {
		r.Capabilities = append(r.Capabilities, CapVaultRewrap)
	}
	if _, ok := kp.(core.DataKeyGenerator); ok {
		r.Capabilities = append(r.Capabilities, CapGenerateDataKey)
	}
	if _, ok := kp.(core.HealthChecker); ok {
		r.Capabilities = append(r.Capabilities, CapHealth)
	}
	if _, ok := kp.(VersionAdmin); ok {
		r.Capabilities = append(r.Capabilities, CapVersions)
	}
	return r, nil
}

func (s *server) Wrap(ctx context.Context, req *pb.WrapRequest) (*pb.WrapResponse, error) {
	kp, err := s.provider()
	if err != nil {
		return nil, grpcStatus(err)
	}
	out := &pb.WrapResponse{Results: make([]*pb.StanzaResult, len(req.GetItems()))}
	items := req.GetItems()
	if err := s.each(ctx, len(items), func(i int) {
		it := items[i]
		var r pb.StanzaResult
		ec, err := contextFromPB(it.GetContext())
		if err == nil {
			var st core.Stanza
			st, err = kp.WrapKey(ctx, core.DEK(it.GetDek()), ec)
			if err == nil {
				r.Stanza = stanzaToPB(st)
			}
		}
		clear(it.Dek)
		r.Error = toPB(err)
		out.Results[i] = &r
	}); err != nil {
		return nil, grpcStatus(err)
	}
	return out, nil
}

func (s *server) Unwrap(ctx context.Context, req *pb.UnwrapRequest) (*pb.UnwrapResponse, error) {
	kp, err := s.provider()
	if err != nil {
		return nil, grpcStatus(err)
	}
	out := &pb.UnwrapResponse{Results: make([]*pb.DEKResult, len(req.GetItems()))}
	items := req.GetItems()
	if err := s.each(ctx, len(items), func(i int) {
		it := items[i]
		var r pb.DEKResult
		st, err := stanzaFromPB(it.GetStanza())
		var ec core.Context
		if err == nil {
			ec, err = contextFromPB(it.GetContext())
		}
		if err == nil {
			var dek core.DEK
			dek, err = kp.UnwrapKey(ctx, st, ec)
			r.Dek = dek
		}
		r.Error = toPB(err)
		out.Results[i] = &r
	}); err != nil {
		return nil, grpcStatus(err)
	}
	// gRPC marshals the response after this returns, so the DEK copies
	// here are left to the garbage collector (a best effort, as in core).
	return out, nil
}

func (s *server) Rewrap(ctx context.Context, req *pb.RewrapRequest) (*pb.RewrapResponse, error) {
	kp, err := s.provider()
	if err != nil {
		return nil, grpcStatus(err)
	}
	vr, _ := kp.(core.VaultRewrapper)
	if req.GetVault() && vr == nil {
		return nil, grpcStatus(fmt.Errorf("provider %q: vault rewrap: %w", s.def.Type, core.ErrUnsupported))
	}
	out := &pb.RewrapResponse{Results: make([]*pb.StanzaResult, len(req.GetItems()))}
	items := req.GetItems()
	if err := s.each(ctx, len(items), func(i int) {
		it := items[i]
		var r pb.StanzaResult
		src, err := stanzaFromPB(it.GetStanza())
		var ec core.Context
		if err == nil {
			ec, err = contextFromPB(it.GetContext())
		}
		if err == nil {
			var st core.Stanza
			if req.GetVault() {
				st, err = vr.RewrapKey(ctx, src, ec)
			} else {
				st, err = rewrapVerified(ctx, kp, src, ec)
			}
			if err == nil {
				r.Stanza = stanzaToPB(st)
			}
		}
		r.Error = toPB(err)
		out.Results[i] = &r
	}); err != nil {
		return nil, grpcStatus(err)
	}
	return out, nil
}

// rewrapVerified does inside the provider process what core.Rewrapper.Rewrap
// does on the host: open src, wrap the DEK under the current version, open
// the new wrap and compare. The DEK never crosses the plugin channel.
func rewrapVerified(ctx context.Context, kp core.KeyProvider, src core.Stanza, ec core.Context) (core.Stanza, error) {
	if src.Ref() != kp.Ref() {
		return core.Stanza{}, fmt.Errorf("stanza names %s, provider is %s: %w", src.Ref(), kp.Ref(), core.ErrNoProvider)
	}
	dek, err := kp.UnwrapKey(ctx, src, ec)
	if err != nil {
		return core.Stanza{}, fmt.Errorf("unwrap with key version %q: %w", src.KeyVersion, err)
	}
	defer dek.Zero()
	if err := dek.Validate(); err != nil {
		return core.Stanza{}, fmt.Errorf("unwrap returned a bad DEK: %w", err)
	}
	st, err := kp.WrapKey(ctx, dek, ec)
	if err != nil {
		return core.Stanza{}, fmt.Errorf("wrap: %w", err)
	}
	check, err := kp.UnwrapKey(ctx, st, ec)
	if err != nil {
		return core.Stanza{}, fmt.Errorf("verify new wrap: %w", err)
	}
	same := check.Equal(dek)
	check.Zero()
	if !same {
		return core.Stanza{}, errors.New("verify new wrap: unwrapped to a different DEK")
	}
	return st, nil
}

func (s *server) GenerateDataKey(ctx context.Context, req *pb.GenerateDataKeyRequest) (*pb.GenerateDataKeyResponse, error) {
	kp, err := s.provider()
	if err != nil {
		return nil, grpcStatus(err)
	}
	g, ok := kp.(core.DataKeyGenerator)
	if !ok {
		return &pb.GenerateDataKeyResponse{Error: toPB(fmt.Errorf("provider %q: generate data key: %w", s.def.Type, core.ErrUnsupported))}, nil
	}
	ec, err := contextFromPB(req.GetContext())
	if err != nil {
		return &pb.GenerateDataKeyResponse{Error: toPB(err)}, nil
	}
	dek, st, err := g.GenerateDataKey(ctx, ec)
	if err != nil {
		return &pb.GenerateDataKeyResponse{Error: toPB(err)}, nil
	}
	return &pb.GenerateDataKeyResponse{Dek: dek, Stanza: stanzaToPB(st)}, nil
}

func (s *server) RotateKey(ctx context.Context, _ *pb.RotateKeyRequest) (*pb.RotateKeyResponse, error) {
	kp, err := s.provider()
	if err != nil {
		return nil, grpcStatus(err)
	}
	r, ok := kp.(core.KeyRotator)
	if !ok {
		return &pb.RotateKeyResponse{Error: toPB(fmt.Errorf("provider %q: rotate: %w", s.def.Type, core.ErrUnsupported))}, nil
	}
	v, err := r.RotateKey(ctx)
	return &pb.RotateKeyResponse{Version: v, Error: toPB(err)}, nil
}

func (s *server) Health(ctx context.Context, _ *pb.HealthRequest) (*pb.HealthResponse, error) {
	kp, err := s.provider()
	if err != nil {
		return nil, grpcStatus(err)
	}
	h, ok := kp.(core.HealthChecker)
	if !ok {
		return &pb.HealthResponse{Error: toPB(fmt.Errorf("provider %q: health: %w", s.def.Type, core.ErrUnsupported))}, nil
	}
	return &pb.HealthResponse{Error: toPB(h.Health(ctx))}, nil
}

func (s *server) ListVersions(ctx context.Context, _ *pb.ListVersionsRequest) (*pb.ListVersionsResponse, error) {
	kp, err := s.provider()
	if err != nil {
		return nil, grpcStatus(err)
	}
	va, ok := kp.(VersionAdmin)
	if !ok {
		return &pb.ListVersionsResponse{Error: toPB(fmt.Errorf("provider %q: KEK versions are managed in its own vault: %w", s.def.Type, core.ErrUnsupported))}, nil
	}
	loc, vs, err := va.Versions(ctx)
	if err != nil {
		return &pb.ListVersionsResponse{Error: toPB(err)}, nil
	}
	r := &pb.ListVersionsResponse{Location: loc}
	for _, v := range vs {
		r.Versions = append(r.Versions, &pb.VersionInfo{Version: v.Version, State: v.State, CreatedUnix: v.Created.Unix(), Current: v.Current})
	}
	return r, nil
}

func (s *server) SetVersionState(ctx context.Context, req *pb.SetVersionStateRequest) (*pb.SetVersionStateResponse, error) {
	kp, err := s.provider()
	if err != nil {
		return nil, grpcStatus(err)
	}
	va, ok := kp.(VersionAdmin)
	if !ok {
		return &pb.SetVersionStateResponse{Error: toPB(fmt.Errorf("provider %q: KEK versions are managed in its own vault: %w", s.def.Type, core.ErrUnsupported))}, nil
	}
	return &pb.SetVersionStateResponse{Error: toPB(va.SetVersionState(ctx, req.GetVersion(), req.GetState()))}, nil
}

// each calls fn for every i in [0, n), up to Provider.Parallel at a time
// (GOMAXPROCS when unset), so that a batch sent by the client is not served
// one item after another: a vault behind the network or an HSM's session
// pool serves several at once. It stops starting items once ctx is done
// and then returns ctx's error.
func (s *server) each(ctx context.Context, n int, fn func(i int)) error {
	width := s.def.Parallel
	if width <= 0 {
		width = runtime.GOMAXPROCS(0)
	}
	width = min(width, n)
	if width <= 1 {
		for i := range n {
			if err := ctx.Err(); err != nil {
				return err
			}
			fn(i)
		}
		return ctx.Err()
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range width {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				fn(i)
			}
		}()
	}
	wg.Wait()
	return ctx.Err()
}
