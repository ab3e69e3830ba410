package builtin

import (
	"context"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/plugin"
	"github.com/keyctl/keyctl/providers/awskms"
)

// AWSKMS adapts providers/awskms:
//
//	provider "awskms" "NAME" {
//	  key_id   = "alias/app-data"          # required: key id, key ARN, alias name or alias ARN
//	  region   = "eu-west-2"               # optional; default AWS_REGION / the profile's region
//	  profile  = "prod"                    # optional; default AWS_PROFILE / "default"
//	  endpoint = "https://kms.example.com" # optional; VPC endpoints, emulators (http on loopback only)
//	}
//
// Nothing here is secret: credentials come from the AWS SDK's default chain
// (environment, shared config and credentials files, SSO, web identity,
// container and instance roles) of the provider process, which inherits
// keyctl's environment. See docs/awskms.md.
var AWSKMS = plugin.Provider{
	Type: awskms.Type,
	Schema: plugin.Schema{Attributes: []plugin.Attribute{
		{Name: "key_id", Type: plugin.String, Required: true,
			Description: "The symmetric KMS key: key id, key ARN, alias name (alias/NAME) or alias ARN. It is recorded in every wrapped key, so keep the same spelling."},
		{Name: "region", Type: plugin.String,
			Description: "AWS region. Default: AWS_REGION, else the profile's region."},
		{Name: "profile", Type: plugin.String,
			Description: "Shared-config profile (~/.aws/config). Default: AWS_PROFILE, else \"default\"."},
		{Name: "endpoint", Type: plugin.String,
			Description: "KMS endpoint override, for VPC endpoints and emulators: an https URL, or http on a loopback address."},
	}},
	Open: openAWSKMS,
	// Each item is one KMS request that mostly waits on the network, so a
	// batch is worked on by many goroutines at once (the SDK pools its
	// HTTP connections); KMS's request quota, not the plugin, sets the pace.
	Parallel: 32,
}

func openAWSKMS(ctx context.Context, v plugin.Values) (core.KeyProvider, error) {
	return awskms.New(ctx, awskms.Config{
		KeyID:    v.String("key_id"),
		Region:   v.String("region"),
		Profile:  v.String("profile"),
		Endpoint: v.String("endpoint"),
	})
}
