// Package awskms is keyctl's AWS KMS provider: the KEK is a symmetric KMS key
// and never leaves KMS; DEKs are wrapped with KMS Encrypt and unwrapped with
// KMS Decrypt.
//
// [Provider] implements [core.KeyProvider], [core.DataKeyGenerator]
// (GenerateDataKey), [core.VaultRewrapper] (ReEncrypt: the DEK never leaves
// KMS), [core.KeyRotator] (RotateKeyOnDemand) and [core.HealthChecker]
// (DescribeKey). [Provider.ImportCiphertext] adopts a KMS CiphertextBlob made
// outside keyctl.
//
// Stanzas carry [core.AlgAWSKMS], the configured key id (as written in the
// configuration: a key id, key ARN, alias name or alias ARN) and, as the key
// version, the key ARN that KMS reports for the operation. KMS keeps every
// backing key of a key after rotation and records the one it used inside the
// CiphertextBlob, so the ARN does not change when the key rotates and wraps
// made before a rotation keep opening.
//
// The encryption context of a wrap is passed unchanged as the KMS
// EncryptionContext, on Encrypt, Decrypt, GenerateDataKey and ReEncrypt. KMS
// refuses empty values, so a [core.Context] with an empty value is refused
// with [core.ErrMalformed] before any call. See docs/awskms.md.
//
// Credentials come from the AWS SDK's default chain (environment, shared
// config and credentials files, SSO, web identity, container and instance
// roles); nothing secret is configured here.
package awskms

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/keyctl/keyctl/core"
)

// Type is the provider type written in the stanzas of this provider.
const Type = "awskms"

// maxCiphertextLen is the largest CiphertextBlob KMS accepts (Decrypt,
// ReEncrypt). Symmetric blobs of a 32-byte DEK are far smaller.
const maxCiphertextLen = 6144

// Config selects a KMS key. Nothing in it is secret.
type Config struct {
	// KeyID names the symmetric encryption KMS key: a key id
	// ("1234abcd-..."), a key ARN, an alias name ("alias/app") or an alias
	// ARN. It is written as the key id of every stanza, so keep it stable:
	// a provider configured with another spelling of the same key does not
	// match those stanzas.
	KeyID string
	// Region is the AWS region; empty means the SDK's default (AWS_REGION,
	// the profile's region). A region is required one way or the other.
	Region string
	// Profile is a shared-config profile; empty means the SDK's default.
	Profile string
	// Endpoint overrides the KMS endpoint, for emulators and VPC endpoints:
	// an https URL, or an http URL on a loopback address (plain http
	// elsewhere would carry DEKs in clear text).
	Endpoint string
}

// Validate checks c without contacting AWS. Errors wrap [core.ErrMalformed].
func (c Config) Validate() error {
	if c.KeyID == "" {
		return fmt.Errorf("awskms: key_id is required: %w", core.ErrMalformed)
	}
	if len(c.KeyID) > 2048 || !utf8.ValidString(c.KeyID) || strings.IndexFunc(c.KeyID, badIDRune) >= 0 {
		return fmt.Errorf("awskms: key_id %q: want a key id, key ARN, alias name or alias ARN (UTF-8 without spaces or control characters, at most 2048 bytes): %w", c.KeyID, core.ErrMalformed)
	}
	if len(c.KeyID) > core.MaxKeyIDLen {
		return fmt.Errorf("awskms: key_id is %d bytes, the wrapped-key format allows %d: %w", len(c.KeyID), core.MaxKeyIDLen, core.ErrMalformed)
	}
	if strings.HasPrefix(c.KeyID, "arn:") {
		parts := strings.SplitN(c.KeyID, ":", 6)
		if len(parts) != 6 || parts[2] != "kms" || !(strings.HasPrefix(parts[5], "key/") || strings.HasPrefix(parts[5], "alias/")) {
			return fmt.Errorf("awskms: key_id %q: an ARN must look like arn:PARTITION:kms:REGION:ACCOUNT:key/ID or .../alias/NAME: %w", c.KeyID, core.ErrMalformed)
		}
	}
	if c.Region != "" && strings.IndexFunc(c.Region, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-')
	}) >= 0 {
		return fmt.Errorf("awskms: region %q: want lower-case letters, digits and '-' (like eu-west-2): %w", c.Region, core.ErrMalformed)
	}
	if !utf8.ValidString(c.Profile) || strings.IndexFunc(c.Profile, badIDRune) >= 0 {
		return fmt.Errorf("awskms: profile %q: UTF-8 without spaces or control characters: %w", c.Profile, core.ErrMalformed)
	}
	if c.Endpoint != "" {
		if err := validEndpoint(c.Endpoint); err != nil {
			return err
		}
	}
	return nil
}

func badIDRune(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }

func validEndpoint(s string) error {
	u, err := url.Parse(s)
	if err != nil || !utf8.ValidString(s) || strings.IndexFunc(s, badIDRune) >= 0 || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("awskms: endpoint %q: want a URL like https://kms.example.com or http://127.0.0.1:4566: %w", s, core.ErrMalformed)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); (ip != nil && ip.IsLoopback()) || host == "localhost" {
			return nil
		}
		return fmt.Errorf("awskms: endpoint %q: plain http is allowed only on a loopback address; use https: %w", s, core.ErrMalformed)
	default:
		return fmt.Errorf("awskms: endpoint %q: scheme must be https (or http on loopback): %w", s, core.ErrMalformed)
	}
}

// RetryPolicy bounds the retries of throttled and transiently failed calls.
// Waits grow exponentially from BaseDelay up to MaxDelay with full jitter,
// and a retry is not started when the caller's deadline would pass during
// the wait.
type RetryPolicy struct {
	// MaxAttempts counts every attempt, the first included; 1 disables
	// retries.
	MaxAttempts int
	BaseDelay   time.Duration
	MaxDelay    time.Duration
}

// DefaultRetryPolicy is used unless [WithRetryPolicy] says otherwise.
var DefaultRetryPolicy = RetryPolicy{MaxAttempts: 6, BaseDelay: 50 * time.Millisecond, MaxDelay: 2 * time.Second}

// Option adjusts [New].
type Option func(*options)

type options struct {
	awsConfig  *aws.Config
	httpClient aws.HTTPClient
	retry      RetryPolicy
}

// WithAWSConfig uses cfg instead of loading the SDK's default configuration
// (Config.Profile is then ignored; Config.Region and Config.Endpoint still
// apply). Tests use it to pass static credentials.
func WithAWSConfig(cfg aws.Config) Option {
	return func(o *options) { c := cfg.Copy(); o.awsConfig = &c }
}

// WithHTTPClient sends requests through c.
func WithHTTPClient(c aws.HTTPClient) Option {
	return func(o *options) { o.httpClient = c }
}

// WithRetryPolicy replaces [DefaultRetryPolicy].
func WithRetryPolicy(r RetryPolicy) Option {
	return func(o *options) { o.retry = r }
}

// Provider is an AWS KMS key provider. It is safe for concurrent use and
// does not serialise calls: each call is one (or, on retries, a few) KMS
// requests over the SDK's pooled HTTP connections.
type Provider struct {
	cfg    Config
	client *kms.Client
	retry  RetryPolicy
}

var (
	_ core.KeyProvider      = (*Provider)(nil)
	_ core.DataKeyGenerator = (*Provider)(nil)
	_ core.VaultRewrapper   = (*Provider)(nil)
	_ core.KeyRotator       = (*Provider)(nil)
	_ core.HealthChecker    = (*Provider)(nil)
)

// New returns a provider for cfg. It loads the AWS SDK configuration
// (region, profile, credential chain) but does not contact KMS; use
// [Provider.Health] to check the key.
func New(ctx context.Context, cfg Config, opts ...Option) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := options{retry: DefaultRetryPolicy}
	for _, opt := range opts {
		opt(&o)
	}
	if o.retry.MaxAttempts < 1 {
		o.retry.MaxAttempts = 1
	}
	var ac aws.Config
	if o.awsConfig != nil {
		ac = *o.awsConfig
	} else {
		var load []func(*awsconfig.LoadOptions) error
		if cfg.Profile != "" {
			load = append(load, awsconfig.WithSharedConfigProfile(cfg.Profile))
		}
		var err error
		ac, err = awsconfig.LoadDefaultConfig(ctx, load...)
		if err != nil {
			return nil, fmt.Errorf("awskms: key %s: load AWS configuration (profile %q): %w", cfg.KeyID, cfg.Profile, err)
		}
	}
	if cfg.Region != "" {
		ac.Region = cfg.Region
	}
	if ac.Region == "" {
		return nil, fmt.Errorf("awskms: key %s: no AWS region: set region in the provider configuration, AWS_REGION, or the profile's region: %w", cfg.KeyID, core.ErrMalformed)
	}
	if o.httpClient != nil {
		ac.HTTPClient = o.httpClient
	}
	client := kms.NewFromConfig(ac, func(ko *kms.Options) {
		ko.Retryer = aws.NopRetryer{} // retries are ours: see (*Provider).call
		if cfg.Endpoint != "" {
			ko.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	})
	return &Provider{cfg: cfg, client: client, retry: o.retry}, nil
}

// Config returns the configuration the provider was made with.
func (p *Provider) Config() Config { return p.cfg }

// Ref returns {awskms, Config.KeyID}.
func (p *Provider) Ref() core.KeyRef { return core.KeyRef{Provider: Type, KeyID: p.cfg.KeyID} }
