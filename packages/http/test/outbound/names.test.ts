import { describe, expect, it } from "vitest";
import { classifyHost, classifyOrigin, type NameContext, splitHostPort } from "../../src/outbound/names.js";

const pod: NameContext = {
  clusterSuffix: ".svc.cluster.local",
  clusterDomain: "cluster.local",
  searchNamespace: "bookshop",
};

describe("names as a pod's resolver reads them", () => {
  it("completes short names with the search path <ns>.svc.<domain>, svc.<domain>, <domain>", () => {
    expect(classifyHost("books", 80, pod)).toMatchObject({
      kind: "service",
      authority: "books.bookshop.svc.cluster.local:80",
      searched: true,
      written: "books",
    });
    expect(classifyHost("Books.Other", 8080, pod)).toMatchObject({
      authority: "books.other.svc.cluster.local:8080",
      searched: true,
    });
    expect(classifyHost("books.other.svc", 80, pod)).toMatchObject({
      authority: "books.other.svc.cluster.local:80",
      searched: true,
    });
    expect(classifyHost("books.other.svc.cluster.local", 80, pod)).toMatchObject({
      authority: "books.other.svc.cluster.local:80",
      searched: false,
    });
    // StatefulSet pod names stay full names.
    expect(classifyHost("books-0.books.other.svc.cluster.local", 80, pod)).toMatchObject({
      kind: "service",
      searched: false,
    });
  });

  it("never searches absolute names, longer names, or without a namespace", () => {
    expect(classifyHost("books.", 80, pod)).toMatchObject({ kind: "external", host: "books" });
    expect(classifyHost("api.example.com", 443, pod)).toMatchObject({
      kind: "external",
      authority: "api.example.com:443",
    });
    expect(classifyHost("books", 80, { ...pod, searchNamespace: undefined })).toMatchObject({
      kind: "external",
    });
    expect(classifyHost("example.com", 80, { ...pod, searchNamespace: undefined })).toMatchObject({
      kind: "external",
    });
  });

  it("addresses are looked up by address; loopback and invalid hosts are left alone", () => {
    expect(classifyHost("10.96.0.12", 80, pod)).toEqual({
      kind: "address",
      authority: "10.96.0.12:80",
      ip: "10.96.0.12",
      port: 80,
    });
    expect(classifyHost("[fd00::1]", 80, pod)).toMatchObject({ kind: "address", authority: "[fd00::1]:80" });
    for (const host of ["127.0.0.1", "127.9.9.9", "::1", "localhost", "api.localhost", "a_b", ""]) {
      expect(classifyHost(host, 80, pod), host).toBeUndefined();
    }
    expect(classifyHost("books", 0, pod)).toBeUndefined();
    expect(classifyHost("books", 70_000, pod)).toBeUndefined();
  });

  it("origins: http and https with their default ports, nothing else", () => {
    expect(classifyOrigin("http://books", pod)).toMatchObject({
      secure: false,
      name: { authority: "books.bookshop.svc.cluster.local:80" },
    });
    expect(classifyOrigin(new URL("https://api.example.com"), pod)).toMatchObject({
      secure: true,
      name: { kind: "external", authority: "api.example.com:443" },
    });
    expect(classifyOrigin("ws://books", pod)).toBeUndefined();
    expect(classifyOrigin("not a url", pod)).toBeUndefined();
    expect(classifyOrigin(42, pod)).toBeUndefined();
  });

  it("splits host:port targets, IPv6 in brackets", () => {
    expect(splitHostPort("db:5432")).toEqual({ host: "db", port: 5432 });
    expect(splitHostPort("[fd00::1]:80")).toEqual({ host: "fd00::1", port: 80 });
    expect(splitHostPort("db")).toBeUndefined();
    expect(splitHostPort("db:0")).toBeUndefined();
    expect(splitHostPort("http://db:80")).toBeUndefined();
  });
});
