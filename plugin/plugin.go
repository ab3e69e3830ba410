// Package plugin is keyctl's go-plugin bridge: it runs key providers as
// subprocesses and talks to them over gRPC.
//
// A provider process calls [Serve] with a [Provider]: its type, the schema
// of its configuration block, and a function that opens a
// [core.KeyProvider] from the decoded attributes. Its main is a few lines:
//
//	func main() {
//		plugin.Serve(plugin.Provider{Type: "example", Schema: schema, Open: open})
//	}
//
// The host starts a provider with [Start] and gets a [*Client], a
// core.KeyProvider (and core.BatchProvider) backed by the subprocess.
// Concurrent single calls are coalesced into batched RPCs and bulk calls
// are split into bounded batches. A provider that dies is restarted on the
// next call. Provider errors cross the boundary with the core sentinels
// they wrap (see errors.go), so errors.Is works on the host as in-process.
//
// The protocol (plugin/proto/provider.proto) is go-plugin's gRPC transport,
// protocol version 1, one plugin named "provider" in the plugin set.
package plugin

import (
	"context"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/keyctl/keyctl/core"
	pb "github.com/keyctl/keyctl/plugin/proto"
)

// ProtocolVersion is the plugin protocol version this package speaks.
const ProtocolVersion = 1

// Handshake is the go-plugin handshake shared by keyctl and every provider
// plugin. The cookie only keeps a plugin binary from being run by hand by
// mistake; it is not a security measure.
var Handshake = goplugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "KEYCTL_PLUGIN_MAGIC_COOKIE",
	MagicCookieValue: "3f6a8e2c0b9d4e51a7c2f04b8d61e9a5-keyctl-provider",
}

// pluginName is the one plugin in the versioned plugin set.
const pluginName = "provider"

// Provider is a provider implementation as a plugin process serves it.
type Provider struct {
	// Type is the provider type ("localfile", "pkcs11", ...), as written
	// in stanzas and as the first label of its configuration block.
	Type string
	// Schema lists the attributes of its configuration block.
	Schema Schema
	// Open returns a provider configured with v. It is called once per
	// Configure. When it needs a secret the configuration did not give, it
	// returns an error wrapping a *NeedSecretError.
	Open func(ctx context.Context, v Values) (core.KeyProvider, error)
	// Parallel is how many items of one batch the plugin process handles at
	// once. Zero means GOMAXPROCS, right for a provider that computes
	// locally; a provider that waits on a network vault or an HSM's session
	// pool sets more (its own limit applies too).
	Parallel int
}

// VersionInfo describes one KEK version for [VersionAdmin].
type VersionInfo struct {
	Version string
	State   string
	Created time.Time
	Current bool
}

// VersionAdmin is implemented by providers whose KEK versions keyctl can
// list and change (the `keyctl kek` commands). The plugin client implements
// it and answers core.ErrUnsupported when the provider does not.
type VersionAdmin interface {
	// Versions returns where the versions live (a key file path, for
	// display) and the versions, oldest first.
	Versions(ctx context.Context) (string, []VersionInfo, error)
	// SetVersionState sets a version's state ("enabled", "disabled",
	// "destroyed").
	SetVersionState(ctx context.Context, version, state string) error
}

// Capability names reported by Describe.
const (
	CapRotate          = "rotate"
	CapVaultRewrap     = "vault_rewrap"
	CapGenerateDataKey = "generate_data_key"
	CapHealth          = "health"
	CapVersions        = "versions"
)

// grpcPlugin is the go-plugin GRPCPlugin of protocol version 1.
type grpcPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	server *server // set in the plugin process only
}

func (p *grpcPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterProviderServer(s, p.server)
	return nil
}

func (p *grpcPlugin) GRPCClient(_ context.Context, _ *goplugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return pb.NewProviderClient(c), nil
}

func pluginSets(s *server) map[int]goplugin.PluginSet {
	return map[int]goplugin.PluginSet{
		ProtocolVersion: {pluginName: &grpcPlugin{server: s}},
	}
}
