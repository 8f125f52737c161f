package sandbox

import "maps"

// Stats counts requests since start (or the last ResetStats). Token requests
// are counted both as "token" and as "token:<grant_type>", so a test can
// assert that exactly one refresh happened:
// Stats().Tenants["generic"]["token:refresh_token"] == 1.
type Stats struct {
	Total     int64                       `json:"total"`
	Endpoints map[string]int64            `json:"endpoints"` // endpoint -> requests, all tenants
	Tenants   map[string]map[string]int64 `json:"tenants"`   // tenant -> endpoint -> requests
	Clients   map[string]map[string]int64 `json:"clients"`   // client_id -> endpoint -> requests
	Faults    map[string]int64            `json:"faults"`    // "endpoint:status" or "export-file:drop" -> injected faults
}

func newStats() Stats {
	return Stats{Endpoints: map[string]int64{}, Tenants: map[string]map[string]int64{},
		Clients: map[string]map[string]int64{}, Faults: map[string]int64{}}
}

func (s *Sandbox) count(t *tenant, endpoint, clientID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Total++
	s.stats.Endpoints[endpoint]++
	if t != nil {
		m := s.stats.Tenants[t.name]
		if m == nil {
			m = map[string]int64{}
			s.stats.Tenants[t.name] = m
		}
		m[endpoint]++
	}
	if clientID != "" {
		m := s.stats.Clients[clientID]
		if m == nil {
			m = map[string]int64{}
			s.stats.Clients[clientID] = m
		}
		m[endpoint]++
	}
}

// countSub adds a sub-counter (e.g. "token:refresh_token") without counting
// another request.
func (s *Sandbox) countSub(t *tenant, name, clientID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Endpoints[name]++
	if t != nil {
		if m := s.stats.Tenants[t.name]; m != nil {
			m[name]++
		}
	}
	if clientID != "" {
		if m := s.stats.Clients[clientID]; m != nil {
			m[name]++
		}
	}
}

func (s *Sandbox) countFault(endpoint, kind string) {
	s.mu.Lock()
	s.stats.Faults[endpoint+":"+kind]++
	s.mu.Unlock()
}

// Stats returns a copy of the request counters (GET {base}/admin/stats).
func (s *Sandbox) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Stats{Total: s.stats.Total, Endpoints: maps.Clone(s.stats.Endpoints), Faults: maps.Clone(s.stats.Faults),
		Tenants: make(map[string]map[string]int64, len(s.stats.Tenants)), Clients: make(map[string]map[string]int64, len(s.stats.Clients))}
	for k, m := range s.stats.Tenants {
		out.Tenants[k] = maps.Clone(m)
	}
	for k, m := range s.stats.Clients {
		out.Clients[k] = maps.Clone(m)
	}
	return out
}

// ResetStats zeroes the counters (POST {base}/admin/stats/reset).
func (s *Sandbox) ResetStats() {
	s.mu.Lock()
	s.stats = newStats()
	s.mu.Unlock()
}
