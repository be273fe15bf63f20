// app polls the sensor, asks the worker to square the reading and logs both.
//
//	SENSOR_URL  default http://sensor:8080
//	WORKER_URL  default http://worker:8080
//	INTERVAL    default 2s (a Go duration)
//	PORT        default 8080, serves /health and / (the last result)
//
// /health is 200 once the app has completed one round trip, 503 before that
// or after 3 failed rounds in a row. "app -healthcheck" asks the running
// server's /health and exits 0 or 1, for a HEALTHCHECK in a scratch image.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"
)

type result struct {
	Value  int64     `json:"value"`
	Square int64     `json:"square"`
	At     time.Time `json:"at"`
}

type state struct {
	mu       sync.Mutex
	last     *result
	failures int
}

func main() {
	check := flag.Bool("healthcheck", false, "query /health of the running server and exit")
	flag.Parse()
	port := getenv("PORT", "8080")
	if *check {
		os.Exit(healthcheck(port))
	}
	sensor := getenv("SENSOR_URL", "http://sensor:8080")
	worker := getenv("WORKER_URL", "http://worker:8080")
	interval, err := time.ParseDuration(getenv("INTERVAL", "2s"))
	if err != nil {
		log.Fatalf("INTERVAL: %v", err)
	}

	st := &state{}
	client := &http.Client{Timeout: 3 * time.Second}
	go func() {
		for {
			r, err := round(client, sensor, worker)
			st.mu.Lock()
			if err != nil {
				st.failures++
				log.Printf("round failed: %v", err)
			} else {
				st.failures = 0
				st.last = r
				log.Printf("sensor=%d square=%d", r.Value, r.Square)
			}
			st.mu.Unlock()
			time.Sleep(interval)
		}
	}()

	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		st.mu.Lock()
		defer st.mu.Unlock()
		if st.last == nil || st.failures >= 3 {
			http.Error(w, fmt.Sprintf("unhealthy: %d failed rounds", st.failures), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		st.mu.Lock()
		defer st.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(st.last)
	})
	log.Printf("app listening on :%s, sensor %s, worker %s", port, sensor, worker)
	log.Fatal(http.ListenAndServe(":"+port, mux))
}

func round(c *http.Client, sensor, worker string) (*result, error) {
	var reading struct {
		Value int64 `json:"value"`
	}
	if err := getJSON(c, sensor+"/", &reading); err != nil {
		return nil, fmt.Errorf("sensor: %w", err)
	}
	var sq struct {
		Square int64 `json:"square"`
	}
	u := worker + "/square?n=" + url.QueryEscape(strconv.FormatInt(reading.Value, 10))
	if err := getJSON(c, u, &sq); err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	return &result{Value: reading.Value, Square: sq.Square, At: time.Now().UTC()}, nil
}

func getJSON(c *http.Client, u string, v any) error {
	resp, err := c.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d", u, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func healthcheck(port string) int {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://127.0.0.1:" + port + "/health")
	if err != nil {
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 1
	}
	return 0
}

func getenv(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}
