package store

// Name identifies a table. Every table of the agent is declared here so that
// key prefixes are allocated in one place and can never collide. Add a name
// when a component needs a new table; never reuse or rename one (the name is
// part of the on-disk key).
type Name string

// Tables of the agent.
const (
	Apps      Name = "apps"       // app identities by id
	AppTokens Name = "app_tokens" // token hash → app id
	AppNames  Name = "app_names"  // app name → app id (apps not revoked)
	Audit     Name = "audit"      // audit entries by sequence
	Meta      Name = "meta"       // agent-wide facts (store format version, first start)

	Events      Name = "events"        // events by global sequence
	EventsByApp Name = "events_by_app" // app id / sequence → nothing (an index)

	Webhooks        Name = "webhooks"         // webhook endpoints by id (no secrets)
	WebhookSecrets  Name = "webhook_secrets"  // endpoint id → signing secrets
	WebhookProgress Name = "webhook_progress" // endpoint id → delivery cursor and pending retry
	WebhookAttempts Name = "webhook_attempts" // endpoint id / event seq / attempt → attempt

	Connections       Name = "connections"        // connection by id (no secrets)
	ConnectionTokens  Name = "connection_tokens"  // connection id → tokens (custody only)
	ConnectionHistory Name = "connection_history" // connection id / time → transition
	ConnectionIndex   Name = "connection_index"   // connection id → compact filter/schedule fields

	PullStates            Name = "pull_states"            // connection id → patient pull bookkeeping
	Sessions              Name = "sessions"               // patient sessions by id
	PendingAuthorizations Name = "pending_authorizations" // OAuth state → verifier, connection (TTL)

	DirSources      Name = "dir_sources"       // directory source by id
	DirEndpoints    Name = "dir_endpoints"     // FHIR endpoint by id (shared by sources)
	DirLists        Name = "dir_lists"         // imported list by id
	DirDiscovery    Name = "dir_discovery"     // endpoint id → discovery result
	DirVendorSetups Name = "dir_vendor_setups" // vendor → imported setup requirements

	Credentials       Name = "credentials"        // credential by id (client secret inside; write-only to callers)
	CredentialTargets Name = "credential_targets" // "source/<id>" or "vendor/<name>" → credential id
	CredentialKeys    Name = "credential_keys"    // kid → private key (generated in the agent) and public JWK

	// Bulk Data syncs (package sync).
	SyncJobs      Name = "sync_jobs"      // sync id → job (request, phase, status URL, manifest)
	SyncFiles     Name = "sync_files"     // sync id / file index → file progress (offset, line, counts, done)
	SyncMalformed Name = "sync_malformed" // sync id / file index / line → malformed line skipped
	SyncErrors    Name = "sync_errors"    // sync id / file index / line → OperationOutcome from an error file
	SyncCursors   Name = "sync_cursors"   // connection id / scope → transactionTime of the last completed sync
	SyncSchedules Name = "sync_schedules" // schedule id → schedule (--every)

	// Records (package records). Keys start with the connection id.
	Records       Name = "records"        // connection/type/id → head (earlier versions; removed at open)
	RecordChanges Name = "record_changes" // connection/seq/type → change (earlier versions; moved to the change log at open)
	RecordPending Name = "record_pending" // connection → first seq of a batch being written (read only to convert stores of earlier versions)
	RecordLogs    Name = "record_logs"    // connection/file id → committed length of a change log file
	RecordBlocks  Name = "record_blocks"  // connection/file id/offset → change log block (stores without a records directory)
)

// sysPrefix marks keys that belong to the store itself (sequences); table keys
// start with tablePrefix.
const (
	sysPrefix   = 0x00
	tablePrefix = 't'
)

func (n Name) prefix() []byte {
	if n == "" {
		panic("store: empty table name")
	}
	p := make([]byte, 0, len(n)+2)
	p = append(p, tablePrefix)
	p = append(p, n...)
	return append(p, '/')
}
