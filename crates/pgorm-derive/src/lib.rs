//! Derive macros of pgorm: `FromRow` (a row into a struct, by column name)
//! and `Model` (a struct that is a table's row: keys, inserts, updates).
//!
//! Use them through `pgorm` with its `derive` feature; the generated code
//! names `::pgorm`. The attributes, all under `#[orm(...)]`, are documented
//! on `pgorm::model`.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{parse_macro_input, Data, DeriveInput, Fields, LitStr};

/// Maps a row to a struct by column name. See `pgorm::model::FromRow`.
#[proc_macro_derive(FromRow, attributes(orm))]
pub fn derive_from_row(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand_from_row(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Makes a struct a table's row. See `pgorm::model::Model`.
#[proc_macro_derive(Model, attributes(orm))]
pub fn derive_model(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand_model(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// What `#[orm(...)]` says about one field.
struct Field {
    ident: syn::Ident,
    ty: syn::Type,
    column: String,
    json: bool,
    flatten: bool,
    default: bool,
    key: bool,
    generated: bool,
}

/// What `#[orm(...)]` says about the struct.
#[derive(Default)]
struct Container {
    table: Option<String>,
    schema: Option<String>,
}

fn check_name(name: &LitStr, what: &str) -> syn::Result<String> {
    let value = name.value();
    if value.is_empty() {
        return Err(syn::Error::new(name.span(), format!("{what} is empty")));
    }
    if value.contains('\0') {
        return Err(syn::Error::new(
            name.span(),
            format!("{what} contains a NUL byte"),
        ));
    }
    if value.len() > 63 {
        return Err(syn::Error::new(
            name.span(),
            format!(
                "{what} is {} bytes long; PostgreSQL identifiers are at most 63 bytes",
                value.len()
            ),
        ));
    }
    Ok(value)
}

fn container(input: &DeriveInput) -> syn::Result<Container> {
    let mut container = Container::default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("orm")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("table") {
                container.table = Some(check_name(&meta.value()?.parse()?, "table name")?);
            } else if meta.path.is_ident("schema") {
                container.schema = Some(check_name(&meta.value()?.parse()?, "schema name")?);
            } else {
                return Err(meta.error("expected `table = \"...\"` or `schema = \"...\"`"));
            }
            Ok(())
        })?;
    }
    Ok(container)
}

fn fields(input: &DeriveInput) -> syn::Result<Vec<Field>> {
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new(
            input.span(),
            "only structs with named fields can be derived",
        ));
    };
    let Fields::Named(named) = &data.fields else {
        return Err(syn::Error::new(
            input.span(),
            "only structs with named fields can be derived",
        ));
    };
    let mut out = Vec::new();
    for field in &named.named {
        let ident = field.ident.clone().expect("named field");
        let raw = ident.to_string();
        let mut parsed = Field {
            column: raw.strip_prefix("r#").unwrap_or(&raw).to_owned(),
            ident,
            ty: field.ty.clone(),
            json: false,
            flatten: false,
            default: false,
            key: false,
            generated: false,
        };
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("orm")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("rename") {
                    parsed.column = check_name(&meta.value()?.parse()?, "column name")?;
                } else if meta.path.is_ident("json") {
                    parsed.json = true;
                } else if meta.path.is_ident("flatten") {
                    parsed.flatten = true;
                } else if meta.path.is_ident("default") {
                    parsed.default = true;
                } else if meta.path.is_ident("key") {
                    parsed.key = true;
                } else if meta.path.is_ident("generated") {
                    parsed.generated = true;
                } else {
                    return Err(meta.error(
                        "expected one of `rename = \"...\"`, `json`, `flatten`, `default`, `key`, `generated`",
                    ));
                }
                Ok(())
            })?;
        }
        if parsed.flatten && (parsed.json || parsed.key || parsed.generated) {
            return Err(syn::Error::new(
                field.span(),
                "`flatten` cannot be combined with `json`, `key` or `generated`",
            ));
        }
        out.push(parsed);
    }
    Ok(out)
}

fn expand_from_row(input: &DeriveInput) -> syn::Result<Tokens> {
    let fields = fields(input)?;
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let inits = fields.iter().map(|field| {
        let ident = &field.ident;
        let ty = &field.ty;
        let column = &field.column;
        let span = ty.span();
        let value = if field.flatten {
            quote_spanned!(span=> <#ty as ::pgorm::model::FromRow>::from_row(row)?)
        } else if field.json {
            match option_inner(ty) {
                Some(inner) => {
                    quote_spanned!(span=> ::pgorm::model::decode_json_opt::<#inner>(row, #column)?)
                }
                None => quote_spanned!(span=> ::pgorm::model::decode_json::<#ty>(row, #column)?),
            }
        } else {
            quote_spanned!(span=> ::pgorm::model::decode::<#ty>(row, #column)?)
        };
        if field.default {
            quote! {
                #ident: if ::pgorm::model::has_column(row, #column) {
                    #value
                } else {
                    ::core::default::Default::default()
                }
            }
        } else {
            quote!(#ident: #value)
        }
    });
    Ok(quote! {
        impl #impl_generics ::pgorm::model::FromRow for #name #ty_generics #where_clause {
            fn from_row(row: &::pgorm::Row) -> ::pgorm::OrmResult<Self> {
                ::core::result::Result::Ok(Self { #(#inits,)* })
            }
        }
    })
}

fn expand_model(input: &DeriveInput) -> syn::Result<Tokens> {
    let container = container(input)?;
    let fields = fields(input)?;
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    if let Some(field) = fields.iter().find(|f| f.flatten) {
        return Err(syn::Error::new(
            field.ident.span(),
            "`flatten` is for FromRow only: a Model's columns are its own fields",
        ));
    }
    let Some(table) = container.table else {
        return Err(syn::Error::new(
            input.ident.span(),
            "a Model needs `#[orm(table = \"...\")]`",
        ));
    };
    let schema = match container.schema {
        Some(schema) => quote!(::core::option::Option::Some(#schema)),
        None => quote!(::core::option::Option::None),
    };
    let keys: Vec<&Field> = fields.iter().filter(|f| f.key).collect();
    if keys.is_empty() {
        return Err(syn::Error::new(
            input.ident.span(),
            "a Model needs at least one `#[orm(key)]` field",
        ));
    }
    let columns = fields.iter().map(|f| &f.column);
    let key_columns = keys.iter().map(|f| &f.column);
    let insert: Vec<&Field> = fields.iter().filter(|f| !f.generated).collect();
    let update: Vec<&Field> = fields.iter().filter(|f| !f.generated && !f.key).collect();
    let insert_columns = insert.iter().map(|f| &f.column);
    let update_columns = update.iter().map(|f| &f.column);
    let param = |field: &Field| {
        let ident = &field.ident;
        if field.json && option_inner(&field.ty).is_some() {
            quote!(::std::boxed::Box::new(self.#ident.as_ref().map(::pgorm::model::Json)))
        } else if field.json {
            quote!(::std::boxed::Box::new(::pgorm::model::Json(&self.#ident)))
        } else {
            quote!(::std::boxed::Box::new(&self.#ident))
        }
    };
    let insert_params = insert.iter().map(|f| param(f));
    let update_params = update.iter().map(|f| param(f));
    let key_types: Vec<&syn::Type> = keys.iter().map(|f| &f.ty).collect();
    let key_idents: Vec<&syn::Ident> = keys.iter().map(|f| &f.ident).collect();

    let key_type;
    let key_value;
    let key_params;
    let key_arrays;
    let key_from_row;
    if keys.len() == 1 {
        let ty = key_types[0];
        let ident = key_idents[0];
        key_type = quote!(#ty);
        key_value = quote!(::core::clone::Clone::clone(&self.#ident));
        key_params = quote!(::std::vec![
            key as &(dyn ::pgorm::ToSql + ::core::marker::Sync)
        ]);
        key_arrays = quote! {
            ::std::vec![::std::boxed::Box::new(keys.to_vec())]
        };
        key_from_row = quote!(::pgorm::model::decode_at::<#ty>(row, start))
    } else {
        let index: Vec<syn::Index> = (0..keys.len()).map(syn::Index::from).collect();
        let offsets = 0..keys.len();
        key_type = quote!((#(#key_types,)*));
        key_value = quote!((#(::core::clone::Clone::clone(&self.#key_idents),)*));
        key_params = quote! {
            ::std::vec![#(&key.#index as &(dyn ::pgorm::ToSql + ::core::marker::Sync),)*]
        };
        key_arrays = quote! {
            ::std::vec![#(
                ::std::boxed::Box::new(
                    keys.iter().map(|key| ::core::clone::Clone::clone(&key.#index)).collect::<::std::vec::Vec<#key_types>>()
                ),
            )*]
        };
        key_from_row = quote! {
            (#(::pgorm::model::decode_at::<#key_types>(row, start + #offsets)?,)*)
        };
    }
    let key_from_row = if keys.len() == 1 {
        key_from_row
    } else {
        quote!(::core::result::Result::Ok(#key_from_row))
    };

    Ok(quote! {
        impl #impl_generics ::pgorm::model::Model for #name #ty_generics #where_clause {
            type Key = #key_type;
            const SCHEMA: ::core::option::Option<&'static str> = #schema;
            const TABLE: &'static str = #table;
            const COLUMNS: &'static [&'static str] = &[#(#columns),*];
            const KEY_COLUMNS: &'static [&'static str] = &[#(#key_columns),*];
            const INSERT_COLUMNS: &'static [&'static str] = &[#(#insert_columns),*];
            const UPDATE_COLUMNS: &'static [&'static str] = &[#(#update_columns),*];

            fn key(&self) -> Self::Key {
                #key_value
            }

            fn key_params(key: &Self::Key) -> ::std::vec::Vec<&(dyn ::pgorm::ToSql + ::core::marker::Sync)> {
                #key_params
            }

            fn key_arrays(keys: &[Self::Key]) -> ::std::vec::Vec<::pgorm::model::BoxedParam<'static>> {
                #key_arrays
            }

            fn key_from_row(row: &::pgorm::Row, start: usize) -> ::pgorm::OrmResult<Self::Key> {
                #key_from_row
            }

            fn insert_params(&self) -> ::std::vec::Vec<::pgorm::model::BoxedParam<'_>> {
                ::std::vec![#(#insert_params),*]
            }

            fn update_params(&self) -> ::std::vec::Vec<::pgorm::model::BoxedParam<'_>> {
                ::std::vec![#(#update_params),*]
            }
        }
    })
}

/// `T` when `ty` is written `Option<T>` (or a path ending in `Option<T>`).
fn option_inner(ty: &syn::Type) -> Option<&syn::Type> {
    let syn::Type::Path(path) = ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        syn::GenericArgument::Type(inner) if args.args.len() == 1 => Some(inner),
        _ => None,
    }
}
