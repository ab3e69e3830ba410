// Package config loads keyctl's HCL configuration file, keyctl.hcl.
//
// The file names the providers (vaults) that hold KEKs, the keyring built
// from them (one primary provider and any number of decrypt-only ones) and
// where the keyset of DEKs is stored:
//
//	provider "localfile" "local" {
//	  key_file   = "kek.json"
//	  passphrase = env("KEYCTL_PASSPHRASE") # or passphrase_env = "KEYCTL_PASSPHRASE"
//	}
//	provider "example" "ext" {             # a third-party provider plugin
//	  plugin = "/usr/local/libexec/keyctl-provider-example"
//	  sha256 = "<hex sha256 of that file>"
//	  label  = "demo"                      # the plugin's own attributes
//	}
//	keyring {
//	  primary      = "local"
//	  decrypt_only = ["ext"]
//	  cache {
//	    max_age  = "5m"
//	    max_uses = 1000
//	  }
//	}
//	keyset {
//	  file = "keyset.json"
//	}
//
// Each provider block carries attributes of its own, checked against the
// schema the provider reports (see package plugin): built-in providers
// report theirs from a fixed table, a third-party plugin is asked for it
// (after its sha256 is checked) before its block is decoded. Relative paths
// resolve against the directory of the configuration file. Secrets never
// appear in the file: a secret attribute is only accepted as env("VAR") (or
// its shorthand NAME_env = "VAR"), read from the environment at load time.
//
// Errors are HCL diagnostics. [Load] and [Parse] return them as an *[Error],
// which wraps [ErrInvalid] and renders each diagnostic as file:line,column
// with the offending source line. The schema is documented in docs/config.md
// and, attribute by attribute, in config.hcl.example at the repository root.
package config

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	"github.com/zclconf/go-cty/cty/function"

	"github.com/keyctl/keyctl/plugin"
	"github.com/keyctl/keyctl/plugin/builtin"
)

// DefaultFile is the configuration file name used when none is given.
const DefaultFile = "keyctl.hcl"

// EnvConfig names the environment variable that may hold the path of the
// configuration file.
const EnvConfig = "KEYCTL_CONFIG"

// MaxFileSize bounds the configuration file; a larger file is refused before
// it is parsed.
const MaxFileSize = 1 << 20

// TypeLocalFile is the type of the built-in key-file provider.
const TypeLocalFile = "localfile"

// ErrInvalid is wrapped by every error that reports a problem in the
// configuration itself (as opposed to a file that cannot be read).
var ErrInvalid = errors.New("invalid configuration")

// ErrNotFound is wrapped by the error [Load] returns when the configuration
// file does not exist.
var ErrNotFound = errors.New("configuration file not found")

// ErrUnknownType is returned by an Options.Schema function for a provider
// type it does not know.
var ErrUnknownType = errors.New("unknown provider type")

// Options adjusts how a file is decoded. The zero Options uses the built-in
// providers' schemas and asks third-party plugins for theirs.
type Options struct {
	// Schema returns the schema of provider block p (p.Type, p.Plugin and
	// p.SHA256 are set). An error wrapping ErrUnknownType gives the
	// "Unknown provider type" diagnostic.
	Schema func(p *Provider) (plugin.Schema, error)
	// KnownTypes lists the types Schema knows without a plugin, for
	// messages.
	KnownTypes []string
	// Getenv reads the environment for env() and NAME_env; nil uses
	// os.LookupEnv.
	Getenv func(string) (string, bool)
}

func (o *Options) defaults() {
	if o.Schema == nil {
		o.Schema = DefaultSchema
		o.KnownTypes = builtin.Types()
	}
	if o.Getenv == nil {
		o.Getenv = os.LookupEnv
	}
}

// DefaultSchema returns the schema of a built-in provider, or asks a
// third-party plugin (p.Plugin, whose sha256 must match p.SHA256) for its
// own. Starting a plugin to read its schema does not configure it and does
// not touch its vault.
func DefaultSchema(p *Provider) (plugin.Schema, error) {
	if p.Plugin == "" {
		b, ok := builtin.Lookup(p.Type)
		if !ok {
			return plugin.Schema{}, ErrUnknownType
		}
		return b.Schema, nil
	}
	path := p.Plugin
	typ, s, err := plugin.FetchSchema(context.Background(), plugin.ClientConfig{
		Name:     p.Name,
		Type:     p.Type,
		Command:  func() *exec.Cmd { return exec.Command(path) },
		SHA256:   p.SHA256,
		AutoMTLS: true,
		Logger:   hclog.New(&hclog.LoggerOptions{Name: "keyctl", Output: os.Stderr, Level: hclog.Error}),
	})
	if err != nil {
		return plugin.Schema{}, err
	}
	if typ != p.Type {
		return plugin.Schema{}, fmt.Errorf("the plugin serves provider type %q, the block says %q", typ, p.Type)
	}
	return s, nil
}

// Config is a loaded and validated configuration.
type Config struct {
	// Path is the absolute path of the file the configuration came from.
	Path string
	// Dir is the directory relative paths were resolved against.
	Dir string
	// Providers are the provider blocks in file order.
	Providers []*Provider
	// Keyrings are the keyring blocks in file order.
	Keyrings []*Keyring
	// Keyring is the keyring in use: the one the keyset block names (or
	// the only one, or "default"), or the one SelectKeyring chose.
	Keyring Keyring
	// Keyset is the keyset block.
	Keyset Keyset
}

// DefaultKeyring is the name of an unlabelled keyring block.
const DefaultKeyring = "default"

// SelectKeyring makes the keyring named name the one in use.
func (c *Config) SelectKeyring(name string) error {
	for _, k := range c.Keyrings {
		if k.Name == name {
			c.Keyring = *k
			return nil
		}
	}
	names := make([]string, len(c.Keyrings))
	for i, k := range c.Keyrings {
		names[i] = fmt.Sprintf("%q", k.Name)
	}
	return fmt.Errorf("%s: no keyring named %q; declared: %s: %w", c.Path, name, strings.Join(names, ", "), ErrInvalid)
}

// Provider is one provider block: a named instance of a provider type.
type Provider struct {
	// Type is the provider type, the block's first label ("localfile").
	Type string
	// Name is the provider's name, the block's second label, used by the
	// keyring block to refer to it. Names are unique in a file.
	Name string
	// Plugin is the absolute path of a third-party provider executable
	// (attribute plugin); empty for a built-in provider.
	Plugin string
	// SHA256 is the checksum Plugin must have (attribute sha256).
	SHA256 []byte
	// Schema is the schema the block was checked against.
	Schema plugin.Schema
	// Values are the provider's own attributes, decoded per Schema;
	// relative paths are resolved. A secret whose environment variable is
	// unset is absent (the provider may then ask for it).
	Values plugin.Values
	// SecretEnv maps each secret attribute given in the block to the
	// environment variable it is read from.
	SecretEnv map[string]string
	// Range is where the block is declared, for messages.
	Range hcl.Range
}

// Keyring is a keyring block.
type Keyring struct {
	// Name is the block's label, "default" for an unlabelled block.
	Name string
	// Primary is the name of the provider that wraps new DEKs.
	Primary string
	// DecryptOnly are the names of providers used only to unwrap.
	DecryptOnly []string
	// Cache is the keyring's DEK cache settings (core.CacheOptions), nil
	// when the block has no cache block.
	Cache *Cache
}

// Cache is the cache block of a keyring: how long, and for how many uses,
// an unwrapped DEK is kept in memory by a program that embeds keyctl.
type Cache struct {
	MaxAge  time.Duration
	MaxUses int
}

// Keyset is the keyset block: where the keyring's wrapped DEKs are stored.
// Exactly one of File, SQLite and PostgresEnv is set.
type Keyset struct {
	// File is the absolute path of a JSON keyset file.
	File string
	// SQLite is the absolute path of a SQLite database file.
	SQLite string
	// PostgresEnv names the environment variable holding the PostgreSQL
	// connection URL (a URL can carry a password, so it is never written in
	// the configuration). It is read when the store is opened.
	PostgresEnv string
	// Name is the keyset's name within a SQL database (one database can
	// hold several keysets); empty means the store's default.
	Name string
	// Keyring is the name of the keyring whose DEKs the keyset holds.
	Keyring string
}

// Kind names the keyset store: "file", "sqlite" or "postgres".
func (k Keyset) Kind() string {
	switch {
	case k.SQLite != "":
		return "sqlite"
	case k.PostgresEnv != "":
		return "postgres"
	default:
		return "file"
	}
}

// String describes the store for messages; it never contains the
// PostgreSQL URL.
func (k Keyset) String() string {
	name := ""
	if k.Name != "" {
		name = fmt.Sprintf(" keyset %q", k.Name)
	}
	switch k.Kind() {
	case "sqlite":
		return "sqlite " + k.SQLite + name
	case "postgres":
		return "postgres $" + k.PostgresEnv + name
	default:
		return k.File
	}
}

// Provider returns the provider block named name.
func (c *Config) Provider(name string) (*Provider, bool) {
	for _, p := range c.Providers {
		if p.Name == name {
			return p, true
		}
	}
	return nil, false
}

// Error reports invalid configuration as HCL diagnostics. It wraps
// [ErrInvalid].
type Error struct {
	// Diagnostics are the error diagnostics, in the order HCL found them.
	Diagnostics hcl.Diagnostics
	files       map[string]*hcl.File
}

// Diag is a diagnostic flattened for display or JSON output.
type Diag struct {
	// File, Line and Column locate the problem; File is empty when the
	// diagnostic has no source location.
	File   string `json:"file,omitempty"`
	Line   int    `json:"line,omitempty"`
	Column int    `json:"column,omitempty"`
	// Summary and Detail describe it.
	Summary string `json:"summary"`
	Detail  string `json:"detail,omitempty"`
	// Snippet is the source line the diagnostic points at, trimmed, with
	// values of secret-looking attributes redacted.
	Snippet string `json:"snippet,omitempty"`
}

// Diags returns the diagnostics flattened, with source snippets.
func (e *Error) Diags() []Diag {
	out := make([]Diag, 0, len(e.Diagnostics))
	for _, d := range e.Diagnostics {
		fd := Diag{Summary: d.Summary, Detail: d.Detail}
		if d.Subject != nil {
			fd.File = d.Subject.Filename
			fd.Line = d.Subject.Start.Line
			fd.Column = d.Subject.Start.Column
			if _, hide := hcl.DiagnosticExtra[noSnippet](d); !hide {
				if f, ok := e.files[d.Subject.Filename]; ok && f != nil {
					fd.Snippet = sourceLine(f.Bytes, d.Subject.Start.Line)
				}
			}
		}
		out = append(out, fd)
	}
	return out
}

// String renders d on one line: "file:line,col: summary; detail; in: snippet".
func (d Diag) String() string {
	var b strings.Builder
	if d.File != "" {
		fmt.Fprintf(&b, "%s:%d,%d: ", d.File, d.Line, d.Column)
	}
	b.WriteString(strings.TrimSuffix(d.Summary, "."))
	if d.Detail != "" {
		b.WriteString("; ")
		b.WriteString(strings.TrimSuffix(d.Detail, "."))
	}
	if d.Snippet != "" {
		fmt.Fprintf(&b, "; in: %s", d.Snippet)
	}
	return b.String()
}

// Error renders every diagnostic on one line, separated by " | ".
func (e *Error) Error() string {
	ds := e.Diags()
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = d.String()
	}
	if len(parts) == 0 {
		return ErrInvalid.Error()
	}
	return strings.Join(parts, " | ")
}

// Unwrap returns ErrInvalid.
func (e *Error) Unwrap() error { return ErrInvalid }

// noSnippet marks a diagnostic whose source line must not be shown (it may
// hold a secret).
type noSnippet struct{}

const maxSnippet = 120

// secretAttr matches attribute names whose values must not be echoed.
var secretAttr = regexp.MustCompile(`(?i)^\s*"?([a-z0-9_-]*(pass|secret|pin|token|password|credential|private)[a-z0-9_-]*)"?\s*=`)

// sourceLine returns line n (1-based) of src, trimmed and shortened, with
// the value of a secret-looking attribute redacted.
func sourceLine(src []byte, n int) string {
	if n < 1 {
		return ""
	}
	lines := strings.SplitN(string(src), "\n", n+1)
	if len(lines) < n {
		return ""
	}
	l := strings.TrimSpace(strings.TrimSuffix(lines[n-1], "\r"))
	if m := secretAttr.FindStringSubmatch(l); m != nil && !strings.HasSuffix(strings.ToLower(m[1]), "_env") {
		l = m[0] + " <redacted>"
	}
	l = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, l)
	if len(l) > maxSnippet {
		l = l[:maxSnippet] + "..."
	}
	return strings.ToValidUTF8(l, "?")
}

// Load reads and parses the configuration file at path with the default
// Options. A missing file gives an error wrapping [ErrNotFound]; invalid
// content gives an *[Error].
func Load(path string) (*Config, error) { return LoadWith(path, Options{}) }

// LoadWith is Load with opts.
func LoadWith(path string, opts Options) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("config %s: %w", path, ErrNotFound)
		}
		// Unreadable (permissions): a configuration problem, not a vault's.
		return nil, fmt.Errorf("config: %v: %w", err, ErrInvalid)
	}
	defer f.Close()
	src, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		// A directory, say.
		return nil, fmt.Errorf("config: read %s: %v: %w", path, err, ErrInvalid)
	}
	if len(src) > MaxFileSize {
		return nil, fmt.Errorf("config %s: larger than %d bytes: %w", path, MaxFileSize, ErrInvalid)
	}
	return ParseWith(src, path, opts)
}

// Parse parses configuration source with the default Options. filename is
// used in diagnostics, and its directory is the base of relative paths in
// the file.
func Parse(src []byte, filename string) (*Config, error) { return ParseWith(src, filename, Options{}) }

// ParseWith is Parse with opts.
func ParseWith(src []byte, filename string, opts Options) (*Config, error) {
	opts.defaults()
	abs, err := filepath.Abs(filename)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	parser := hclparse.NewParser()
	file, diags := parser.ParseHCL(src, filename)
	fail := func(d hcl.Diagnostics) error {
		var errs hcl.Diagnostics
		for _, x := range d {
			if x.Severity == hcl.DiagError {
				errs = append(errs, x)
			}
		}
		return &Error{Diagnostics: errs, files: parser.Files()}
	}
	if diags.HasErrors() {
		return nil, fail(diags)
	}
	d := &decoder{opts: opts, dir: filepath.Dir(abs), filename: filename}
	cfg, diags := d.decode(file)
	if diags.HasErrors() {
		for _, p := range cfg.Providers {
			p.Values.Zero()
		}
		return nil, fail(diags)
	}
	cfg.Path = abs
	cfg.Dir = d.dir
	return cfg, nil
}

type keyringSchema struct {
	Primary     string       `hcl:"primary"`
	DecryptOnly []string     `hcl:"decrypt_only,optional"`
	Cache       *cacheSchema `hcl:"cache,block"`
}

type cacheSchema struct {
	MaxAge  *string `hcl:"max_age,optional"`
	MaxUses *int    `hcl:"max_uses,optional"`
}

type keysetSchema struct {
	File        string         `hcl:"file,optional"`
	SQLite      string         `hcl:"sqlite,optional"`
	Postgres    hcl.Expression `hcl:"postgres,optional"`
	PostgresEnv string         `hcl:"postgres_env,optional"`
	Name        string         `hcl:"name,optional"`
	Keyring     *string        `hcl:"keyring,optional"`
}

var (
	envName   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	provName  = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,63}$`)
	sha256Hex = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)
)

// topSchema is the file's layout, but for keyring blocks, whose label is
// optional (HCL schemas cannot say so); decode reads those itself.
var topSchema = &hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{
	{Type: "provider", LabelNames: []string{"type", "name"}},
	{Type: "keyset"},
}}

type decoder struct {
	opts     Options
	dir      string
	filename string
}

// evalContext offers env("NAME") to non-secret attributes.
func (d *decoder) evalContext() *hcl.EvalContext {
	return &hcl.EvalContext{Functions: map[string]function.Function{
		"env": function.New(&function.Spec{
			Params: []function.Parameter{{Name: "name", Type: cty.String}},
			Type:   function.StaticReturnType(cty.String),
			Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
				name := args[0].AsString()
				if !envName.MatchString(name) {
					return cty.NilVal, fmt.Errorf("%q is not an environment variable name", name)
				}
				v, ok := d.opts.Getenv(name)
				if !ok {
					return cty.NilVal, fmt.Errorf("environment variable %s is not set", name)
				}
				return cty.StringVal(v), nil
			},
		}),
	}}
}

func (d *decoder) abs(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(d.dir, p)
}

func errDiag(summary, detail string, at hcl.Range, extra ...any) *hcl.Diagnostic {
	r := at
	dg := &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: &r}
	if len(extra) > 0 {
		dg.Extra = extra[0]
	}
	return dg
}

func (d *decoder) decode(file *hcl.File) (*Config, hcl.Diagnostics) {
	cfg := &Config{}
	content, _, diags := file.Body.PartialContent(topSchema)
	if content == nil {
		return cfg, diags
	}
	var keyrings []*hcl.Block
	if sb, ok := file.Body.(*hclsyntax.Body); ok {
		for _, a := range sb.Attributes {
			diags = append(diags, errDiag("Unsupported argument", fmt.Sprintf("An argument named %q is not expected here.", a.Name), a.NameRange))
		}
		for _, b := range sb.Blocks {
			switch b.Type {
			case "provider", "keyset":
			case "keyring":
				if len(b.Labels) > 1 {
					diags = append(diags, errDiag("Extraneous label for keyring", "A keyring block has at most one label, its name.", b.LabelRanges[1]))
					continue
				}
				keyrings = append(keyrings, b.AsHCLBlock())
			default:
				diags = append(diags, errDiag("Unsupported block type", fmt.Sprintf("Blocks of type %q are not expected here.", b.Type), b.TypeRange))
			}
		}
	}
	fileStart := hcl.Range{Filename: d.filename, Start: hcl.InitialPos, End: hcl.InitialPos}
	// Diagnostics about a missing block point at the file's start, where
	// a snippet would mislead.
	var fileLevel noSnippet
	byName := map[string]*Provider{}
	declaredNames := map[string]bool{}
	var keysets []*hcl.Block
	nProviders := 0
	for _, b := range content.Blocks {
		switch b.Type {
		case "keyset":
			keysets = append(keysets, b)
			continue
		}
		nProviders++
		typ, name, at := b.Labels[0], b.Labels[1], b.DefRange
		declaredNames[name] = true
		if !provName.MatchString(name) {
			diags = append(diags, errDiag("Invalid provider name",
				fmt.Sprintf("Provider name %q must start with a letter and hold only letters, digits, '-' and '_' (at most 64).", name), at))
			continue
		}
		if prev, dup := byName[name]; dup {
			diags = append(diags, errDiag("Duplicate provider name",
				fmt.Sprintf("A provider named %q is already declared at %s; provider names must be unique.", name, prev.Range), at))
			continue
		}
		p := &Provider{Type: typ, Name: name, Range: at}
		byName[name] = p
		pd := d.provider(p, b)
		diags = append(diags, pd...)
		if !pd.HasErrors() {
			cfg.Providers = append(cfg.Providers, p)
		}
	}
	if nProviders == 0 {
		diags = append(diags, errDiag("Missing provider block",
			fmt.Sprintf("At least one provider block is required, for example: provider %q \"local\" { key_file = \"kek.json\" }.", TypeLocalFile), fileStart, fileLevel))
	}

	if len(keyrings) == 0 {
		diags = append(diags, errDiag("Missing keyring block", "A keyring block is required: keyring { primary = \"<provider name>\" }.", fileStart, fileLevel))
	}
	ringAt := map[string]hcl.Range{}
	for _, b := range keyrings {
		name := DefaultKeyring
		if len(b.Labels) == 1 {
			name = b.Labels[0]
		}
		if prev, dup := ringAt[name]; dup {
			diags = append(diags, errDiag("Duplicate keyring block",
				fmt.Sprintf("A keyring named %q is already declared at %s; keyring names must be unique (an unlabelled keyring is named %q).", name, prev, DefaultKeyring), b.DefRange))
			continue
		}
		ringAt[name] = b.DefRange
		if !provName.MatchString(name) {
			diags = append(diags, errDiag("Invalid keyring name",
				fmt.Sprintf("Keyring name %q must start with a letter and hold only letters, digits, '-' and '_' (at most 64).", name), b.DefRange))
			continue
		}
		kd := d.keyring(cfg, b, declaredNames)
		diags = append(diags, kd...)
		if !kd.HasErrors() {
			cfg.Keyring.Name = name
			k := cfg.Keyring
			cfg.Keyrings = append(cfg.Keyrings, &k)
		}
	}

	switch len(keysets) {
	case 0:
		diags = append(diags, errDiag("Missing keyset block", "A keyset block is required: keyset { file = \"keyset.json\" }.", fileStart, fileLevel))
	case 1:
		var ks keysetSchema
		kd := gohcl.DecodeBody(keysets[0].Body, nil, &ks)
		diags = append(diags, kd...)
		if !kd.HasErrors() {
			var kdiags hcl.Diagnostics
			cfg.Keyset, kdiags = d.keysetStore(ks, keysets[0])
			diags = append(diags, kdiags...)
			diags = append(diags, d.keysetRing(cfg, ks, keysets[0], ringAt)...)
		}
	default:
		diags = append(diags, errDiag("Duplicate keyset block",
			fmt.Sprintf("Only one keyset block is allowed; the first is at %s.", keysets[0].DefRange), keysets[1].DefRange))
	}
	return cfg, diags
}

// keysetRing picks the keyring of the keyset: the one its keyring
// attribute names, else the only one, else "default".
// keysetStore decodes where the keyset is stored: file, sqlite, or postgres
// (postgres = env("VAR") or postgres_env = "VAR"; a literal URL is refused
// because it can carry a password).
func (d *decoder) keysetStore(ks keysetSchema, b *hcl.Block) (Keyset, hcl.Diagnostics) {
	var out Keyset
	pgEnv := ks.PostgresEnv
	at := b.DefRange
	if ks.Postgres != nil {
		// Absent, gohcl gives a null expression; env("VAR") does not
		// evaluate without a context, which is fine: only its argument is read.
		if v, vd := ks.Postgres.Value(nil); vd.HasErrors() || !v.IsNull() {
			if !isEnvCall(ks.Postgres) {
				return out, hcl.Diagnostics{errDiag("Invalid postgres",
					"The keyset's postgres URL can carry a password, so it is never written in the configuration; write postgres = env(\"VAR\") or postgres_env = \"VAR\".", ks.Postgres.Range(), noSnippet{})}
			}
			if pgEnv != "" {
				return out, hcl.Diagnostics{errDiag("Conflicting attributes", "Give postgres or postgres_env, not both.", ks.Postgres.Range())}
			}
			nv, nd := ks.Postgres.(*hclsyntax.FunctionCallExpr).Args[0].Value(nil)
			if nd.HasErrors() || nv.IsNull() || !nv.Type().Equals(cty.String) {
				return out, hcl.Diagnostics{errDiag("Invalid env()", "env() takes the name of an environment variable as a literal string.", ks.Postgres.Range())}
			}
			pgEnv, at = nv.AsString(), ks.Postgres.Range()
		}
	}
	if pgEnv != "" && !envName.MatchString(pgEnv) {
		return out, hcl.Diagnostics{errDiag("Invalid postgres_env", fmt.Sprintf("%q is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*).", pgEnv), at)}
	}
	n := 0
	for _, v := range []string{ks.File, ks.SQLite, pgEnv} {
		if strings.TrimSpace(v) != "" {
			n++
		}
	}
	if n != 1 {
		return out, hcl.Diagnostics{errDiag("Where is the keyset?",
			"The keyset block needs exactly one of file = \"keyset.json\", sqlite = \"keyset.db\" or postgres = env(\"VAR\").", b.DefRange)}
	}
	if ks.Name != "" && ks.File != "" {
		return out, hcl.Diagnostics{errDiag("Unexpected name", "A keyset file holds one keyset; name applies to sqlite and postgres only.", b.DefRange)}
	}
	if len(ks.Name) > 200 {
		return out, hcl.Diagnostics{errDiag("Invalid name", "The keyset name is longer than 200 bytes.", b.DefRange)}
	}
	out = Keyset{File: d.abs(ks.File), SQLite: d.abs(ks.SQLite), PostgresEnv: pgEnv, Name: ks.Name}
	return out, nil
}

func (d *decoder) keysetRing(cfg *Config, ks keysetSchema, b *hcl.Block, ringAt map[string]hcl.Range) hcl.Diagnostics {
	if len(ringAt) == 0 {
		return nil // "Missing keyring block" says it
	}
	declared := make([]string, 0, len(ringAt))
	for n := range ringAt {
		declared = append(declared, fmt.Sprintf("%q", n))
	}
	slices.Sort(declared)
	name := ""
	switch {
	case ks.Keyring != nil:
		name = *ks.Keyring
		if _, ok := ringAt[name]; !ok {
			at := b.DefRange
			if sb, ok := b.Body.(*hclsyntax.Body); ok {
				if a, ok := sb.Attributes["keyring"]; ok {
					at = a.Expr.Range()
				}
			}
			return hcl.Diagnostics{errDiag("Unknown keyring name",
				fmt.Sprintf("The keyset names keyring %q, but no keyring block has that name; declared: %s.", name, strings.Join(declared, ", ")), at)}
		}
	case len(ringAt) == 1:
		for n := range ringAt {
			name = n
		}
	default:
		if _, ok := ringAt[DefaultKeyring]; !ok {
			return hcl.Diagnostics{errDiag("Which keyring?",
				fmt.Sprintf("The file declares keyrings %s and none is unlabelled; set keyring = \"<name>\" in the keyset block.", strings.Join(declared, ", ")), b.DefRange)}
		}
		name = DefaultKeyring
	}
	cfg.Keyset.Keyring = name
	for _, k := range cfg.Keyrings {
		if k.Name == name {
			cfg.Keyring = *k
		}
	}
	return nil
}

func (d *decoder) keyring(cfg *Config, b *hcl.Block, declared map[string]bool) hcl.Diagnostics {
	var kr keyringSchema
	diags := gohcl.DecodeBody(b.Body, nil, &kr)
	if diags.HasErrors() {
		return diags
	}
	cfg.Keyring = Keyring{Primary: kr.Primary, DecryptOnly: kr.DecryptOnly}
	attrRange := map[string]hcl.Range{}
	if sb, ok := b.Body.(*hclsyntax.Body); ok {
		for n, a := range sb.Attributes {
			attrRange[n] = a.Expr.Range()
		}
	}
	seen := map[string]bool{}
	for i, name := range append([]string{kr.Primary}, kr.DecryptOnly...) {
		attr := "primary"
		if i > 0 {
			attr = "decrypt_only"
		}
		at, ok := attrRange[attr]
		if !ok {
			at = b.DefRange
		}
		if seen[name] {
			diags = append(diags, errDiag("Duplicate provider in keyring",
				fmt.Sprintf("Provider %q is named more than once in the keyring (primary and decrypt_only together must be distinct).", name), at))
			continue
		}
		seen[name] = true
		if len(declared) > 0 && !declared[name] {
			names := make([]string, 0, len(declared))
			for n := range declared {
				names = append(names, fmt.Sprintf("%q", n))
			}
			slices.Sort(names)
			diags = append(diags, errDiag("Unknown provider name",
				fmt.Sprintf("The keyring names provider %q, but no provider block has that name; declared: %s.", name, strings.Join(names, ", ")), at))
		}
	}
	if kr.Cache != nil {
		c := &Cache{}
		at := b.DefRange
		if sb, ok := b.Body.(*hclsyntax.Body); ok {
			for _, blk := range sb.Blocks {
				if blk.Type == "cache" {
					at = blk.DefRange()
				}
			}
		}
		if kr.Cache.MaxAge != nil {
			dur, err := time.ParseDuration(*kr.Cache.MaxAge)
			if err != nil || dur <= 0 {
				diags = append(diags, errDiag("Invalid max_age", fmt.Sprintf("cache.max_age must be a positive duration such as \"30s\" or \"5m\", not %q.", *kr.Cache.MaxAge), at))
			}
			c.MaxAge = dur
		}
		if kr.Cache.MaxUses != nil {
			if *kr.Cache.MaxUses < 0 {
				diags = append(diags, errDiag("Invalid max_uses", "cache.max_uses must be zero (no limit) or positive.", at))
			}
			c.MaxUses = *kr.Cache.MaxUses
		}
		cfg.Keyring.Cache = c
	}
	return diags
}

// provider decodes one provider block: its reserved attributes (plugin,
// sha256), then its own attributes against the provider's schema.
func (d *decoder) provider(p *Provider, b *hcl.Block) hcl.Diagnostics {
	var diags hcl.Diagnostics
	sb, ok := b.Body.(*hclsyntax.Body)
	if !ok {
		return hcl.Diagnostics{errDiag("Unsupported configuration syntax", "Only native HCL syntax is supported.", b.DefRange)}
	}
	ectx := d.evalContext()
	str := func(a *hclsyntax.Attribute) (string, bool) {
		v, vd := a.Expr.Value(ectx)
		diags = append(diags, vd...)
		if vd.HasErrors() {
			return "", false
		}
		v, err := convert.Convert(v, cty.String)
		if err != nil || v.IsNull() {
			diags = append(diags, errDiag("Incorrect attribute value type", fmt.Sprintf("Attribute %q must be a string.", a.Name), a.Expr.Range()))
			return "", false
		}
		return v.AsString(), true
	}
	pa, hasPlugin := sb.Attributes["plugin"]
	sa, hasSHA := sb.Attributes["sha256"]
	if hasPlugin {
		path, ok := str(pa)
		if ok && strings.TrimSpace(path) == "" {
			diags = append(diags, errDiag("Empty plugin", fmt.Sprintf("Provider %q: plugin must name the provider's executable.", p.Name), pa.Expr.Range()))
		}
		p.Plugin = d.abs(path)
		if !hasSHA {
			diags = append(diags, errDiag("Missing sha256",
				fmt.Sprintf("Provider %q runs the plugin %s; add sha256 = \"<hex>\" (sha256sum of the file) so that keyctl runs only that binary.", p.Name, path), pa.NameRange))
		}
	}
	if hasSHA {
		if !hasPlugin {
			diags = append(diags, errDiag("Unexpected sha256", fmt.Sprintf("Provider %q: sha256 is the checksum of a plugin executable; it needs plugin = \"PATH\".", p.Name), sa.NameRange))
		}
		if h, ok := str(sa); ok {
			if !sha256Hex.MatchString(h) {
				diags = append(diags, errDiag("Invalid sha256", fmt.Sprintf("Provider %q: sha256 must be 64 hexadecimal digits.", p.Name), sa.Expr.Range()))
			} else {
				p.SHA256, _ = hex.DecodeString(h)
			}
		}
	}
	if diags.HasErrors() {
		return diags
	}
	schema, err := d.opts.Schema(p)
	if err != nil {
		if errors.Is(err, ErrUnknownType) {
			return append(diags, errDiag("Unknown provider type",
				fmt.Sprintf("Provider type %q is not known to this build (a third-party provider is named by plugin = \"PATH\" and sha256); known types: %s.", p.Type, strings.Join(d.opts.KnownTypes, ", ")), b.DefRange))
		}
		at := b.DefRange
		if hasPlugin {
			at = pa.Expr.Range()
		}
		return append(diags, errDiag("Cannot read the provider's schema", fmt.Sprintf("Provider %q: %v.", p.Name, err), at))
	}
	p.Schema = schema

	bs := &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "plugin"}, {Name: "sha256"}}}
	for _, a := range schema.Attributes {
		bs.Attributes = append(bs.Attributes, hcl.AttributeSchema{Name: a.Name, Required: a.Required && !a.Secret})
		if a.Secret {
			bs.Attributes = append(bs.Attributes, hcl.AttributeSchema{Name: a.Name + "_env"})
		}
	}
	// A literal secret is refused before anything else looks at it, so
	// that no other diagnostic echoes it.
	for _, a := range schema.Attributes {
		if !a.Secret {
			continue
		}
		if attr, ok := sb.Attributes[a.Name]; ok && !isEnvCall(attr.Expr) {
			return append(diags, errDiag("Secret in configuration",
				fmt.Sprintf("Provider %q: %s is a secret and is never written in the configuration; write %s = env(\"VAR\") or %s_env = \"VAR\" to read it from the environment, or leave it out to be prompted on a terminal.", p.Name, a.Name, a.Name, a.Name),
				attr.NameRange, noSnippet{}))
		}
	}
	content, cd := b.Body.Content(bs)
	diags = append(diags, cd...)
	if content == nil || cd.HasErrors() {
		return diags
	}
	p.Values = plugin.Values{}
	for _, a := range schema.Attributes {
		attr, has := content.Attributes[a.Name]
		if a.Secret {
			diags = append(diags, d.secret(p, a, attr, content.Attributes[a.Name+"_env"])...)
			continue
		}
		if !has {
			continue
		}
		v, vd := d.value(p, a, attr, ectx)
		diags = append(diags, vd...)
		if !vd.HasErrors() {
			p.Values[a.Name] = v
		}
	}
	return diags
}

// isEnvCall reports whether e is env(<something>).
func isEnvCall(e hcl.Expression) bool {
	c, ok := e.(*hclsyntax.FunctionCallExpr)
	return ok && c.Name == "env" && len(c.Args) == 1
}

// secret decodes secret attribute a, given as a = env("VAR") (attr) or
// a_env = "VAR" (envAttr). The value is read now; an unset variable leaves
// it absent, for the provider to ask (keyctl then prompts on a terminal or
// names the variable to set).
func (d *decoder) secret(p *Provider, a plugin.Attribute, attr, envAttr *hcl.Attribute) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if attr != nil && envAttr != nil {
		return hcl.Diagnostics{errDiag("Conflicting attributes", fmt.Sprintf("Provider %q: give %s or %s_env, not both.", p.Name, a.Name, a.Name), envAttr.NameRange)}
	}
	var nameExpr hcl.Expression
	var at hcl.Range
	switch {
	case attr != nil:
		nameExpr, at = attr.Expr.(*hclsyntax.FunctionCallExpr).Args[0], attr.Expr.Range()
	case envAttr != nil:
		nameExpr, at = envAttr.Expr, envAttr.Expr.Range()
	default:
		if a.Required {
			diags = append(diags, errDiag("Missing required argument",
				fmt.Sprintf("Provider %q: %s is required; write %s = env(\"VAR\").", p.Name, a.Name, a.Name), p.Range))
		}
		return diags
	}
	v, vd := nameExpr.Value(nil)
	if vd.HasErrors() || v.IsNull() || !v.Type().Equals(cty.String) || !envName.MatchString(v.AsString()) {
		what := a.Name + "_env"
		if attr != nil {
			what = "env()"
		}
		return hcl.Diagnostics{errDiag("Invalid "+what,
			fmt.Sprintf("Provider %q: %s must be given the name of an environment variable ([A-Za-z_][A-Za-z0-9_]*) as a literal string, not the %s itself.", p.Name, what, a.Name), at, noSnippet{})}
	}
	name := v.AsString()
	if p.SecretEnv == nil {
		p.SecretEnv = map[string]string{}
	}
	p.SecretEnv[a.Name] = name
	if val, ok := d.opts.Getenv(name); ok && val != "" {
		p.Values[a.Name] = plugin.Value{Secret: []byte(val)}
	}
	return nil
}

// value decodes a non-secret attribute per its schema type.
func (d *decoder) value(p *Provider, a plugin.Attribute, attr *hcl.Attribute, ectx *hcl.EvalContext) (plugin.Value, hcl.Diagnostics) {
	v, diags := attr.Expr.Value(ectx)
	if diags.HasErrors() {
		return plugin.Value{}, diags
	}
	at := attr.Expr.Range()
	want := cty.String
	switch a.Type {
	case plugin.Number:
		want = cty.Number
	case plugin.Bool:
		want = cty.Bool
	case plugin.StringList:
		want = cty.List(cty.String)
	}
	cv, err := convert.Convert(v, want)
	if err != nil || cv.IsNull() || !cv.IsWhollyKnown() {
		return plugin.Value{}, hcl.Diagnostics{errDiag("Incorrect attribute value type",
			fmt.Sprintf("Provider %q: %s must be a %s.", p.Name, a.Name, a.Type), at)}
	}
	var out plugin.Value
	switch a.Type {
	case plugin.Number:
		out.Num, _ = cv.AsBigFloat().Float64()
	case plugin.Bool:
		out.Bool = cv.True()
	case plugin.StringList:
		for _, e := range cv.AsValueSlice() {
			if e.IsNull() {
				return plugin.Value{}, hcl.Diagnostics{errDiag("Incorrect attribute value type", fmt.Sprintf("Provider %q: %s holds a null.", p.Name, a.Name), at)}
			}
			out.List = append(out.List, e.AsString())
		}
	case plugin.Path:
		s := cv.AsString()
		if strings.TrimSpace(s) == "" {
			return plugin.Value{}, hcl.Diagnostics{errDiag("Empty "+a.Name, fmt.Sprintf("Provider %q: %s must name a file.", p.Name, a.Name), at)}
		}
		out.Str = d.abs(s)
	case plugin.Duration:
		s := cv.AsString()
		if _, err := time.ParseDuration(s); err != nil {
			return plugin.Value{}, hcl.Diagnostics{errDiag("Invalid duration", fmt.Sprintf("Provider %q: %s must be a duration such as \"30s\", not %q.", p.Name, a.Name, s), at)}
		}
		out.Str = s
	default:
		out.Str = cv.AsString()
	}
	return out, nil
}
