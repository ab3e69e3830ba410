package builtin_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/keyctl/keyctl/config"
	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/core/providertest"
	"github.com/keyctl/keyctl/plugin"
	"github.com/keyctl/keyctl/plugin/builtin"
	"github.com/keyctl/keyctl/providers/awskms"
	"github.com/keyctl/keyctl/providers/awskms/awskmstest"
)

// awskmsServeEnv makes the test binary the awskms plugin process (the age
// style: plugin tests re-execute the test binary). It is a helper test
// rather than a TestMain so that other adapters' tests in this package can
// have their own.
const awskmsServeEnv = "KEYCTL_TEST_SERVE_AWSKMS"

// TestAWSKMSPluginProcess is not a test: with awskmsServeEnv set it serves
// the built-in awskms provider and exits.
func TestAWSKMSPluginProcess(t *testing.T) {
	if os.Getenv(awskmsServeEnv) != "1" {
		return
	}
	if err := builtin.Serve(awskms.Type); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
	os.Exit(0)
}

func awskmsCommand() *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestAWSKMSPluginProcess$")
	cmd.Env = append(os.Environ(), awskmsServeEnv+"=1")
	return cmd
}

// emulatorEnv starts an emulator and puts its credentials and region in
// this process's environment, which the plugin process inherits (go-plugin
// appends the host's environment after the command's own, so t.Setenv is
// the way to make them win).
func emulatorEnv(t *testing.T, seed awskmstest.Seed) *awskmstest.Emulator {
	t.Helper()
	e := awskmstest.Start(t, seed)
	for _, kv := range e.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	return e
}

func startAWSKMS(t testing.TB, v plugin.Values) (*plugin.Client, error) {
	c, err := plugin.Start(context.Background(), plugin.ClientConfig{
		Name:    "kms",
		Type:    awskms.Type,
		Command: awskmsCommand,
		Schema:  builtin.AWSKMS.Schema,
		Values:  v,
		Logger:  hclog.NewNullLogger(),
	})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c, nil
}

func kmsValues(e *awskmstest.Emulator, keyID string) plugin.Values {
	// No region: it comes from AWS_REGION of the emulator's environment,
	// through the SDK's default chain, as credentials do.
	return plugin.Values{"key_id": {Str: keyID}, "endpoint": {Str: e.Endpoint}}
}

// TestAWSKMSConformanceThroughPlugin runs the conformance suite against the
// local-kms emulator through the plugin bridge: keyctl's plugin client, a
// plugin process serving builtin.AWSKMS, the SDK's default credential chain.
func TestAWSKMSConformanceThroughPlugin(t *testing.T) {
	aliasA, aliasB := "alias/plugin-a", "alias/plugin-b"
	keyA, keyB := awskmstest.NewKeyID(), awskmstest.NewKeyID()
	e := emulatorEnv(t, awskmstest.Seed{
		Keys:    []awskmstest.Key{{ID: keyA}, {ID: keyB}},
		Aliases: []awskmstest.Alias{{Name: aliasA, TargetKeyID: keyA}, {Name: aliasB, TargetKeyID: keyB}},
	})
	start := func(keyID func(t *testing.T) string) func(t *testing.T) core.KeyProvider {
		return func(t *testing.T) core.KeyProvider {
			c, err := startAWSKMS(t, kmsValues(e, keyID(t)))
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
	}
	t.Run("KeyARN", func(t *testing.T) {
		fresh := func(t *testing.T) string { return e.CreateKey(t) }
		providertest.Run(t, providertest.Harness{
			New:   start(fresh),
			Other: start(fresh),
			// The recorded version is the key ARN, which KMS rotation does
			// not change, and local-kms does not implement
			// RotateKeyOnDemand; rotation is tested in providers/awskms.
			NoRotation: true,
		})
	})
	t.Run("Alias", func(t *testing.T) {
		// An alias names the same key in every subtest, so one plugin
		// process per alias serves them all (plugin starts dominate the
		// run time under -race).
		shared := func(alias string) func(*testing.T) core.KeyProvider {
			c, err := startAWSKMS(t, kmsValues(e, alias))
			if err != nil {
				t.Fatal(err)
			}
			return func(*testing.T) core.KeyProvider { return c }
		}
		providertest.Run(t, providertest.Harness{
			New:        shared(aliasA),
			Other:      shared(aliasB),
			NoRotation: true,
		})
	})
}

// TestAWSKMSThroughPlugin checks what the conformance suite does not: the
// capabilities the plugin reports, the recorded version, that ReEncrypt
// crosses the bridge, and that configuration and KMS errors keep their
// sentinels and name the key.
func TestAWSKMSThroughPlugin(t *testing.T) {
	key := awskmstest.NewKeyID()
	e := emulatorEnv(t, awskmstest.Seed{Keys: []awskmstest.Key{{ID: key}}})
	ctx := context.Background()
	c, err := startAWSKMS(t, kmsValues(e, key))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Ref(); got != (core.KeyRef{Provider: awskms.Type, KeyID: key}) {
		t.Fatalf("Ref %v", got)
	}
	caps := c.Capabilities()
	for _, want := range []string{"rewrap", "generate"} {
		if !slices.ContainsFunc(caps, func(c string) bool { return strings.Contains(c, want) }) {
			t.Errorf("capabilities %v lack %q", caps, want)
		}
	}
	v, err := c.CurrentVersion(ctx)
	if err != nil || v != awskmstest.KeyARN(key) {
		t.Fatalf("CurrentVersion %q, %v; want the key ARN", v, err)
	}
	ec := core.Context{"table": "users"}
	dek, s, err := c.GenerateDataKey(ctx, ec)
	if err != nil {
		t.Fatal(err)
	}
	defer dek.Zero()
	if s.KeyVersion != v || s.Algorithm != core.AlgAWSKMS {
		t.Fatalf("stanza %+v", s)
	}
	s2, err := c.RewrapKey(ctx, s, ec)
	if err != nil {
		t.Fatalf("RewrapKey (ReEncrypt) through the plugin: %v", err)
	}
	got, err := c.UnwrapKey(ctx, s2, ec)
	if err != nil || !got.Equal(dek) {
		t.Fatalf("unwrap of the rewrapped stanza: %v", err)
	}
	got.Zero()

	// A KMS error crosses the bridge with its sentinel and the key.
	_, err = c.UnwrapKey(ctx, s, core.Context{"table": "orders"})
	if !errors.Is(err, core.ErrUnwrapFailed) || !strings.Contains(err.Error(), key) {
		t.Fatalf("wrong context: %v", err)
	}
	// The plugin describes the key when it starts, so a key that does not
	// exist fails the start, naming it.
	unknown := awskmstest.NewKeyID()
	if _, err := startAWSKMS(t, kmsValues(e, unknown)); !errors.Is(err, core.ErrKeyNotFound) || !strings.Contains(err.Error(), unknown) {
		t.Fatalf("unknown key: %v", err)
	}

	// Configuration the adapter refuses before any KMS call.
	for name, v := range map[string]plugin.Values{
		"plain http off loopback": {"key_id": {Str: key}, "endpoint": {Str: "http://kms.example.com"}},
		"bad key id":              {"key_id": {Str: "arn:aws:s3:::bucket"}},
		"bad region":              {"key_id": {Str: key}, "region": {Str: "EU West"}},
	} {
		if _, err := startAWSKMS(t, v); !errors.Is(err, core.ErrMalformed) {
			t.Errorf("%s: Start error %v, want ErrMalformed", name, err)
		}
	}
}

// TestAWSKMSConfig decodes awskms blocks against the adapter's schema: the
// commented block of config.hcl.example (uncommented here), and a typo and a
// missing key_id, which are file:line diagnostics.
func TestAWSKMSConfig(t *testing.T) {
	cfg := parseExampleBlock(t, "awskms")
	i := slices.IndexFunc(cfg.Providers, func(p *config.Provider) bool { return p.Type == awskms.Type })
	if i < 0 {
		t.Fatal("no awskms provider decoded")
	}
	p := cfg.Providers[i]
	if err := (awskms.Config{KeyID: p.Values.String("key_id"), Region: p.Values.String("region"),
		Profile: p.Values.String("profile"), Endpoint: p.Values.String("endpoint")}).Validate(); err != nil {
		t.Fatalf("the example's awskms block: %v", err)
	}

	const rest = "keyring {\n  primary = \"kms\"\n}\nkeyset {\n  file = \"k.json\"\n}\n"
	for name, tc := range map[string]struct{ block, want string }{
		"typo":           {"provider \"awskms\" \"kms\" {\n  key_id = \"alias/a\"\n  regoin = \"eu-west-2\"\n}\n", "keyctl.hcl:3"},
		"missing key_id": {"provider \"awskms\" \"kms\" {\n  region = \"eu-west-2\"\n}\n", "keyctl.hcl:1"},
	} {
		_, err := config.ParseWith([]byte(tc.block+rest), "keyctl.hcl", config.Options{Getenv: noEnv})
		if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want a diagnostic at %s", name, err, tc.want)
		}
	}
}
