// The OpenAPI 3.1 document of the service, served at /openapi.json. `openapi.json` at
// the repository root is the same text (a test keeps the two equal).
enum OpenAPIDocument {
    static let json = #"""
{
  "openapi": "3.1.0",
  "info": {
    "title": "sandpit",
    "version": "1.0.0",
    "description": "Runs Python in a sandbox and returns what it cost, from the kernel's counters."
  },
  "components": {
    "securitySchemes": {
      "bearer": {
        "type": "http",
        "scheme": "bearer"
      }
    },
    "schemas": {
      "Error": {
        "type": "object",
        "required": [
          "error",
          "detail"
        ],
        "properties": {
          "error": {
            "type": "string"
          },
          "detail": {
            "type": "string"
          }
        }
      },
      "ExecuteRequest": {
        "type": "object",
        "required": [
          "code"
        ],
        "additionalProperties": false,
        "properties": {
          "code": {
            "type": "string"
          },
          "stdin": {
            "type": [
              "string",
              "null"
            ]
          },
          "args": {
            "type": [
              "array",
              "null"
            ],
            "items": {
              "type": "string"
            }
          },
          "container_name": {
            "type": [
              "string",
              "null"
            ],
            "minLength": 1,
            "maxLength": 256,
            "description": "1 to 256 characters"
          },
          "time_limit": {
            "type": [
              "number",
              "null"
            ],
            "description": "seconds",
            "minimum": 0.001,
            "maximum": 300
          },
          "cpu_limit": {
            "type": [
              "number",
              "null"
            ],
            "description": "seconds",
            "minimum": 0.001,
            "maximum": 300
          },
          "memory_limit": {
            "type": [
              "integer",
              "null"
            ],
            "description": "bytes",
            "minimum": 16777216,
            "maximum": 17179869184
          },
          "pids_limit": {
            "type": [
              "integer",
              "null"
            ],
            "minimum": 1,
            "maximum": 4096
          },
          "output_limit": {
            "type": [
              "integer",
              "null"
            ],
            "description": "bytes, each stream",
            "minimum": 0,
            "maximum": 67108864
          }
        }
      },
      "ExecutionResult": {
        "type": "object",
        "required": [
          "success",
          "output",
          "error",
          "container_id",
          "container_name",
          "execution_time",
          "exit_code",
          "cpu_user_time",
          "cpu_system_time",
          "cpu_percent",
          "memory_usage",
          "memory_peak",
          "memory_percent",
          "memory_limit",
          "block_io_read",
          "block_io_write",
          "network_io_rx",
          "network_io_tx",
          "pids_count",
          "status",
          "signal",
          "oom_killed",
          "timed_out",
          "stdout_truncated",
          "stderr_truncated",
          "started_at"
        ],
        "properties": {
          "success": {
            "type": "boolean"
          },
          "output": {
            "type": "string",
            "description": "stdout (invalid UTF-8 replaced by U+FFFD)"
          },
          "error": {
            "type": [
              "string",
              "null"
            ],
            "description": "stderr, or why the run failed"
          },
          "container_id": {
            "type": "string"
          },
          "container_name": {
            "type": "string"
          },
          "execution_time": {
            "type": "number",
            "description": "seconds, execve to exit"
          },
          "exit_code": {
            "type": [
              "integer",
              "null"
            ]
          },
          "cpu_user_time": {
            "type": [
              "number",
              "null"
            ]
          },
          "cpu_system_time": {
            "type": [
              "number",
              "null"
            ]
          },
          "cpu_percent": {
            "type": [
              "number",
              "null"
            ]
          },
          "memory_usage": {
            "type": [
              "integer",
              "null"
            ]
          },
          "memory_peak": {
            "type": [
              "integer",
              "null"
            ]
          },
          "memory_percent": {
            "type": [
              "number",
              "null"
            ]
          },
          "memory_limit": {
            "type": [
              "integer",
              "null"
            ]
          },
          "block_io_read": {
            "type": [
              "integer",
              "null"
            ]
          },
          "block_io_write": {
            "type": [
              "integer",
              "null"
            ]
          },
          "network_io_rx": {
            "type": [
              "integer",
              "null"
            ]
          },
          "network_io_tx": {
            "type": [
              "integer",
              "null"
            ]
          },
          "pids_count": {
            "type": [
              "integer",
              "null"
            ]
          },
          "status": {
            "type": "string",
            "enum": [
              "ok",
              "runtime_error",
              "signaled",
              "timeout",
              "memory_limit",
              "output_limit",
              "internal_error"
            ]
          },
          "signal": {
            "type": [
              "integer",
              "null"
            ]
          },
          "oom_killed": {
            "type": "boolean"
          },
          "timed_out": {
            "type": "boolean"
          },
          "stdout_truncated": {
            "type": "boolean"
          },
          "stderr_truncated": {
            "type": "boolean"
          },
          "started_at": {
            "type": "string",
            "format": "date-time"
          }
        }
      },
      "ExecutionSummary": {
        "type": "object",
        "required": [
          "id",
          "status",
          "created_at"
        ],
        "properties": {
          "id": {
            "type": "integer"
          },
          "container_id": {
            "type": [
              "string",
              "null"
            ]
          },
          "container_name": {
            "type": [
              "string",
              "null"
            ]
          },
          "success": {
            "type": [
              "boolean",
              "null"
            ]
          },
          "status": {
            "type": [
              "string",
              "null"
            ]
          },
          "exit_code": {
            "type": [
              "integer",
              "null"
            ]
          },
          "signal": {
            "type": [
              "integer",
              "null"
            ]
          },
          "execution_time": {
            "type": [
              "number",
              "null"
            ]
          },
          "cpu_user_time": {
            "type": [
              "number",
              "null"
            ]
          },
          "cpu_system_time": {
            "type": [
              "number",
              "null"
            ]
          },
          "cpu_percent": {
            "type": [
              "number",
              "null"
            ]
          },
          "memory_usage": {
            "type": [
              "integer",
              "null"
            ]
          },
          "memory_peak": {
            "type": [
              "integer",
              "null"
            ]
          },
          "memory_percent": {
            "type": [
              "number",
              "null"
            ]
          },
          "memory_limit": {
            "type": [
              "integer",
              "null"
            ]
          },
          "block_io_read": {
            "type": [
              "integer",
              "null"
            ]
          },
          "block_io_write": {
            "type": [
              "integer",
              "null"
            ]
          },
          "network_io_rx": {
            "type": [
              "integer",
              "null"
            ]
          },
          "network_io_tx": {
            "type": [
              "integer",
              "null"
            ]
          },
          "pids_count": {
            "type": [
              "integer",
              "null"
            ]
          },
          "oom_killed": {
            "type": [
              "boolean",
              "null"
            ]
          },
          "timed_out": {
            "type": [
              "boolean",
              "null"
            ]
          },
          "created_at": {
            "type": [
              "string",
              "null"
            ]
          },
          "queued_at": {
            "type": [
              "string",
              "null"
            ]
          },
          "started_at": {
            "type": [
              "string",
              "null"
            ]
          },
          "finished_at": {
            "type": [
              "string",
              "null"
            ]
          },
          "host": {
            "type": [
              "string",
              "null"
            ]
          },
          "log_truncated": {
            "type": [
              "boolean",
              "null"
            ],
            "description": "the stored output or error was cut at the log's output limit (--log-output-limit); the response had all of it. Null for rows logged before this column existed."
          }
        }
      },
      "Execution": {
        "allOf": [
          {
            "$ref": "#/components/schemas/ExecutionSummary"
          },
          {
            "type": "object",
            "required": [
              "code"
            ],
            "properties": {
              "code": {
                "type": [
                  "string",
                  "null"
                ]
              },
              "output": {
                "type": [
                  "string",
                  "null"
                ]
              },
              "error": {
                "type": [
                  "string",
                  "null"
                ]
              }
            }
          }
        ]
      },
      "ExecutionPage": {
        "type": "object",
        "required": [
          "executions",
          "next_cursor"
        ],
        "properties": {
          "executions": {
            "type": "array",
            "items": {
              "$ref": "#/components/schemas/ExecutionSummary"
            }
          },
          "next_cursor": {
            "type": [
              "integer",
              "null"
            ]
          }
        }
      },
      "Stats": {
        "type": "object",
        "required": [
          "count",
          "success_rate",
          "execution_time",
          "cpu_time",
          "memory_peak"
        ],
        "properties": {
          "count": {
            "type": "integer"
          },
          "success_rate": {
            "type": [
              "number",
              "null"
            ]
          },
          "execution_time": {
            "type": "object",
            "required": [
              "p50",
              "p95",
              "max"
            ],
            "properties": {
              "p50": {
                "type": [
                  "number",
                  "null"
                ]
              },
              "p95": {
                "type": [
                  "number",
                  "null"
                ]
              },
              "max": {
                "type": [
                  "number",
                  "null"
                ]
              }
            }
          },
          "cpu_time": {
            "type": "object",
            "required": [
              "p50",
              "p95",
              "max"
            ],
            "properties": {
              "p50": {
                "type": [
                  "number",
                  "null"
                ]
              },
              "p95": {
                "type": [
                  "number",
                  "null"
                ]
              },
              "max": {
                "type": [
                  "number",
                  "null"
                ]
              }
            }
          },
          "memory_peak": {
            "type": "object",
            "required": [
              "p50",
              "p95",
              "max"
            ],
            "properties": {
              "p50": {
                "type": [
                  "number",
                  "null"
                ]
              },
              "p95": {
                "type": [
                  "number",
                  "null"
                ]
              },
              "max": {
                "type": [
                  "number",
                  "null"
                ]
              }
            }
          },
          "since": {
            "type": [
              "string",
              "null"
            ]
          },
          "until": {
            "type": [
              "string",
              "null"
            ]
          }
        }
      },
      "Health": {
        "type": "object",
        "required": [
          "status",
          "cgroups"
        ],
        "properties": {
          "status": {
            "type": "string"
          },
          "cgroups": {
            "type": "boolean"
          },
          "cgroup_version": {
            "type": [
              "string",
              "null"
            ]
          },
          "in_flight": {
            "type": "integer"
          },
          "queued": {
            "type": "integer"
          }
        }
      }
    }
  },
  "security": [
    {
      "bearer": []
    }
  ],
  "paths": {
    "/execute": {
      "post": {
        "summary": "Run a program",
        "requestBody": {
          "required": true,
          "content": {
            "application/json": {
              "schema": {
                "$ref": "#/components/schemas/ExecuteRequest"
              }
            }
          }
        },
        "responses": {
          "200": {
            "description": "The result (also for programs that failed or hit a limit)",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/ExecutionResult"
                }
              }
            }
          },
          "400": {
            "description": "Invalid request",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Error"
                }
              }
            }
          },
          "401": {
            "description": "Missing or wrong token",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Error"
                }
              }
            }
          },
          "408": {
            "description": "The request's head and body did not arrive within --read-timeout; the connection is closed",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Error"
                }
              }
            }
          },
          "413": {
            "description": "Body too large",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Error"
                }
              }
            }
          },
          "429": {
            "description": "All slots and queue places taken",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Error"
                }
              }
            },
            "headers": {
              "Retry-After": {
                "schema": {
                  "type": "integer"
                }
              }
            }
          },
          "503": {
            "description": "Shutting down, or the log cannot be written",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Error"
                }
              }
            }
          }
        }
      }
    },
    "/executions": {
      "get": {
        "summary": "Logged runs, newest first",
        "parameters": [
          {
            "name": "limit",
            "in": "query",
            "schema": {
              "type": "integer",
              "minimum": 1,
              "maximum": 500
            }
          },
          {
            "name": "cursor",
            "in": "query",
            "schema": {
              "type": "integer",
              "minimum": 0,
              "maximum": 9223372036854775807
            },
            "description": "next_cursor of the previous page"
          },
          {
            "name": "status",
            "in": "query",
            "schema": {
              "type": "string"
            }
          },
          {
            "name": "container_name",
            "in": "query",
            "schema": {
              "type": "string"
            }
          },
          {
            "name": "since",
            "in": "query",
            "schema": {
              "type": "string",
              "format": "date-time"
            }
          },
          {
            "name": "until",
            "in": "query",
            "schema": {
              "type": "string",
              "format": "date-time"
            }
          }
        ],
        "responses": {
          "200": {
            "description": "A page",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/ExecutionPage"
                }
              }
            }
          },
          "400": {
            "description": "Invalid query",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Error"
                }
              }
            }
          },
          "401": {
            "description": "Missing or wrong token",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Error"
                }
              }
            }
          }
        }
      }
    },
    "/executions/stats": {
      "get": {
        "summary": "Aggregates over a time window",
        "parameters": [
          {
            "name": "since",
            "in": "query",
            "schema": {
              "type": "string",
              "format": "date-time"
            }
          },
          {
            "name": "until",
            "in": "query",
            "schema": {
              "type": "string",
              "format": "date-time"
            }
          }
        ],
        "responses": {
          "200": {
            "description": "Aggregates",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Stats"
                }
              }
            }
          },
          "400": {
            "description": "Invalid query",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Error"
                }
              }
            }
          },
          "401": {
            "description": "Missing or wrong token",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Error"
                }
              }
            }
          }
        }
      }
    },
    "/executions/{id}": {
      "get": {
        "summary": "One logged run, with code and output",
        "parameters": [
          {
            "name": "id",
            "in": "path",
            "required": true,
            "schema": {
              "type": "integer",
              "minimum": 0,
              "maximum": 9223372036854775807
            }
          }
        ],
        "responses": {
          "200": {
            "description": "The row",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Execution"
                }
              }
            }
          },
          "400": {
            "description": "Invalid id",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Error"
                }
              }
            }
          },
          "404": {
            "description": "No such run",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Error"
                }
              }
            }
          },
          "401": {
            "description": "Missing or wrong token",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Error"
                }
              }
            }
          }
        }
      }
    },
    "/health": {
      "get": {
        "summary": "Liveness and whether cgroups are usable",
        "security": [],
        "responses": {
          "200": {
            "description": "Alive",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Health"
                }
              }
            }
          }
        }
      }
    },
    "/metrics": {
      "get": {
        "summary": "Prometheus metrics",
        "responses": {
          "200": {
            "description": "Prometheus text format",
            "content": {
              "text/plain": {
                "schema": {
                  "type": "string"
                }
              }
            }
          },
          "401": {
            "description": "Missing or wrong bearer token",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Error"
                }
              }
            }
          }
        }
      }
    },
    "/openapi.json": {
      "get": {
        "summary": "This document",
        "responses": {
          "200": {
            "description": "OpenAPI 3.1",
            "content": {
              "application/json": {
                "schema": {
                  "type": "object"
                }
              }
            }
          },
          "401": {
            "description": "Missing or wrong bearer token",
            "content": {
              "application/json": {
                "schema": {
                  "$ref": "#/components/schemas/Error"
                }
              }
            }
          }
        }
      }
    }
  }
}
"""#
}
